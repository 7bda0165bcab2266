// Optimizer against LibTorch's AdamW, schedule, CRC-32C, metrics lines and TensorBoard records.
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "core/file_io.h"
#include "core/crc32c.h"
#include "core/error.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/proto/tensorboard.pb.h"

namespace switchyard::trainer {
namespace {
namespace fs = std::filesystem;

/// The hyperparameters both AdamW tests use (LibTorch's AdamWOptions below spell the same).
core::TrainConfig adamw_config() {
  core::TrainConfig cfg;
  cfg.weight_decay = 0.1;
  cfg.beta1 = 0.9;
  cfg.beta2 = 0.95;
  cfg.adam_eps = 1e-8;
  return cfg;
}

TEST(AdamW, MatchesLibTorchAdamW) {
  torch::manual_seed(0);
  const core::TrainConfig cfg = adamw_config();
  auto a = torch::randn({4, 3}, torch::requires_grad());
  auto b = a.detach().clone().requires_grad_();
  AdamW ours({{"w", a}}, cfg);
  torch::optim::AdamW theirs({b}, torch::optim::AdamWOptions(0.01).betas({0.9, 0.95}).eps(1e-8).weight_decay(0.1));
  for (int step = 0; step < 6; ++step) {
    const auto target = torch::randn({4, 3});
    ours.zero_grad();
    theirs.zero_grad();
    (a - target).pow(2).sum().backward();
    (b - target).pow(2).sum().backward();
    ours.step(0.01);
    theirs.step();
    EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-7)) << "step " << step;
  }
  EXPECT_EQ(ours.steps(), 6);
}

// On CUDA fp32 parameters take the AdamW kernel: the same update as the CPU loop, weight decay on
// matrices only, over several steps, with a parameter that has no gradient in the first step
// (skipped, no state) and one in every later step, one whose size is no multiple of the kernel's
// 4-value packs (the tail) and one whose storage starts 4 bytes past 16-byte alignment (unpacked).
TEST(AdamW, CudaStepMatchesTheCpuLoop) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(0);
  const core::TrainConfig cfg = adamw_config();
  const auto w0 = torch::randn({64, 48}), b0 = torch::randn({48}), u0 = torch::randn({8}), t0 = torch::randn({7, 1});
  auto w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_(), u = u0.clone().requires_grad_();
  auto t = t0.clone().requires_grad_();
  auto wc = w0.cuda().requires_grad_(), uc = u0.cuda().requires_grad_(), tc = t0.cuda().requires_grad_();
  auto bc = torch::cat({torch::zeros({1}), b0}).cuda().narrow(0, 1, 48).detach().requires_grad_();  // misaligned
  ASSERT_NE(reinterpret_cast<uintptr_t>(bc.data_ptr()) % 16, 0u);
  AdamW cpu({{"w", w}, {"b", b}, {"u", u}, {"t", t}}, cfg), gpu({{"w", wc}, {"b", bc}, {"u", uc}, {"t", tc}}, cfg);
  for (int step = 0; step < 5; ++step) {
    const auto x = torch::randn({16, 64}), target = torch::randn({16, 48});
    cpu.zero_grad();
    gpu.zero_grad();
    auto loss = (x.matmul(w) + b - target).pow(2).mean() + t.pow(3).sum();
    auto loss_c = (x.cuda().matmul(wc) + bc - target.cuda()).pow(2).mean() + tc.pow(3).sum();
    if (step > 0) {  // u has no gradient before the second step
      loss = loss + u.pow(2).sum();
      loss_c = loss_c + uc.pow(2).sum();
    }
    loss.backward();
    loss_c.backward();
    cpu.step(0.01);
    gpu.step(0.01);
    for (const auto& [a, c] : {std::pair{w, wc}, std::pair{b, bc}, std::pair{u, uc}, std::pair{t, tc}}) {
      EXPECT_TRUE(torch::allclose(a, c.cpu(), 1e-5, 1e-6)) << "step " << step << ": " << (a - c.cpu()).abs().max().item<double>();
    }
  }
  EXPECT_FALSE(torch::allclose(w, w0));  // it moved
}

TEST(AdamW, DeviceStepEqualsTheHostStep) {
  // step_on_device (the update inside the step's CUDA graph) reads the learning rate, the clipping
  // divisor and the skip flag from device tensors: it equals step(lr, multiplier), and found_inf = 1
  // leaves parameters and moments as they were.
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(2);
  const auto w0 = torch::randn({32, 16}).cuda(), b0 = torch::randn({16}).cuda();
  auto w = w0.clone().requires_grad_(), b = b0.clone().requires_grad_();
  auto wd = w0.clone().requires_grad_(), bd = b0.clone().requires_grad_();
  AdamW host({{"w", w}, {"b", b}}, adamw_config()), device({{"w", wd}, {"b", bd}}, adamw_config());
  const auto opts = torch::dtype(torch::kFloat32).device(torch::kCUDA);
  const auto lr = torch::full({}, 0.01, opts), count = torch::zeros({}, opts);
  for (int step = 0; step < 3; ++step) {
    const auto gw = torch::randn({32, 16}).cuda(), gb = torch::randn({16}).cuda();
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    wd.mutable_grad() = gw.clone();
    bd.mutable_grad() = gb.clone();
    host.step(0.01, 0.25);
    count.fill_(static_cast<double>(device.steps() + 1));
    device.step_on_device(lr, torch::full({}, 4.0, opts), torch::zeros({}, opts), count);
    device.count_step();
    EXPECT_TRUE(torch::allclose(w, wd, 1e-6, 1e-7)) << "step " << step;
    EXPECT_TRUE(torch::allclose(b, bd, 1e-6, 1e-7)) << "step " << step;
  }
  const auto before = wd.detach().clone(), moment = device.state("w").exp_avg.clone();
  device.step_on_device(lr, torch::ones({}, opts), torch::ones({}, opts), count);
  EXPECT_TRUE(torch::equal(wd, before)) << "found_inf 1 must skip the update";
  EXPECT_TRUE(torch::equal(device.state("w").exp_avg, moment));
}

TEST(AdamW, KeptCopyIsTheUpdatedWeightInBf16) {
  // After each update a kept copy holds the weight rounded to bf16 and the weight's version (the
  // experts' cache reads it as current): the CPU loop and the CUDA kernel (written in the same pass),
  // for a size with a tail past the kernel's packs.
  std::vector<torch::Device> devices = {torch::kCPU};
  if (torch::cuda::is_available()) devices.push_back(torch::kCUDA);
  for (const auto& device : devices) {
    torch::manual_seed(3);
    auto w = torch::randn({13, 5}).to(device).requires_grad_();
    auto copy = std::make_shared<modules::WeightCopy>();
    AdamW opt({{"w", w}}, adamw_config());
    opt.keep_bf16_copy(w, copy);
    for (int step = 0; step < 3; ++step) {
      const auto version = w._version();
      w.mutable_grad() = torch::randn({13, 5}).to(device);
      opt.step(0.01, step == 1 ? 0.5 : 1.0);
      ASSERT_TRUE(copy->bf16.defined()) << device;
      EXPECT_EQ(copy->bf16.scalar_type(), torch::kBFloat16);
      EXPECT_TRUE(torch::equal(copy->bf16, w.detach().to(torch::kBFloat16))) << device << " step " << step;
      EXPECT_GT(static_cast<int64_t>(w._version()), static_cast<int64_t>(version)) << device << ": the update moves the version";
      EXPECT_EQ(copy->version, static_cast<int64_t>(w._version())) << device << " step " << step;
    }
  }
}

TEST(AdamW, GradMultiplierEqualsScaledGradients) {
  // Clipping folds into the update: step(lr, m) on g equals step(lr) on m g (CPU loop, and the fused
  // kernels' grad_scale on CUDA).
  std::vector<torch::Device> devices = {torch::kCPU};
  if (torch::cuda::is_available()) devices.push_back(torch::kCUDA);
  for (const auto& device : devices) {
    torch::manual_seed(1);
    const auto w0 = torch::randn({16, 8}).to(device), g = torch::randn({16, 8}).to(device);
    auto a = w0.clone().requires_grad_(), b = w0.clone().requires_grad_();
    AdamW ours_a({{"w", a}}, adamw_config()), ours_b({{"w", b}}, adamw_config());
    for (int step = 0; step < 3; ++step) {
      a.mutable_grad() = g.clone();
      b.mutable_grad() = g * 0.3;
      ours_a.step(0.01, 0.3);
      ours_b.step(0.01);
      EXPECT_TRUE(torch::allclose(a, b, 1e-6, 1e-7)) << device << " step " << step;
    }
    ours_a.zero_grad();
    EXPECT_FALSE(a.grad().defined()) << "zero_grad drops the gradients";
  }
}

TEST(Schedule, WarmupThenCosineToMin) {
  core::TrainConfig cfg;
  cfg.lr = 1.0;
  cfg.min_lr_ratio = 0.1;
  cfg.warmup_steps = 10;
  cfg.steps = 110;
  EXPECT_NEAR(learning_rate(cfg, 0), 0.1, 1e-12);
  EXPECT_NEAR(learning_rate(cfg, 9), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(cfg, 10), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(cfg, 60), 0.55, 1e-12);  // halfway: (1 + 0.1) / 2
  EXPECT_NEAR(learning_rate(cfg, 110), 0.1, 1e-12);
}

TEST(Schedule, WsdIsStableThenDecaysToMinAtTheLastStep) {
  core::TrainConfig cfg;
  cfg.lr = 1.0;
  cfg.min_lr_ratio = 0.1;
  cfg.warmup_steps = 10;
  cfg.steps = 100;
  cfg.lr_schedule = core::LrSchedule::kWsd;
  cfg.decay_fraction = 0.2;  // decay over steps 80-99
  for (const auto shape : {core::DecayShape::kLinear, core::DecayShape::kCosine, core::DecayShape::kOneMinusSqrt}) {
    cfg.decay_shape = shape;
    EXPECT_NEAR(learning_rate(cfg, 0), 0.1, 1e-12);   // warmup
    EXPECT_NEAR(learning_rate(cfg, 10), 1.0, 1e-12);  // stable
    EXPECT_NEAR(learning_rate(cfg, 79), 1.0, 1e-12);
    EXPECT_NEAR(learning_rate(cfg, 80), 1.0, 1e-12);  // the decay's first step
    EXPECT_NEAR(learning_rate(cfg, 99), 0.1, 1e-12);  // the last step reaches min
    EXPECT_NEAR(learning_rate(cfg, 150), 0.1, 1e-12);
  }
  const double p = 10.0 / 19.0;  // step 90
  cfg.decay_shape = core::DecayShape::kLinear;
  EXPECT_NEAR(learning_rate(cfg, 90), 0.1 + 0.9 * (1 - p), 1e-12);
  cfg.decay_shape = core::DecayShape::kCosine;
  EXPECT_NEAR(learning_rate(cfg, 90), 0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * p)), 1e-12);
  cfg.decay_shape = core::DecayShape::kOneMinusSqrt;
  EXPECT_NEAR(learning_rate(cfg, 90), 0.1 + 0.9 * (1 - std::sqrt(p)), 1e-12);
  // Corners: no decay at all; a decay over every step after warmup; a decay longer than the run.
  cfg.decay_shape = core::DecayShape::kLinear;
  cfg.decay_fraction = 0;
  EXPECT_NEAR(learning_rate(cfg, 99), 1.0, 1e-12);
  cfg.decay_fraction = 1;
  EXPECT_NEAR(learning_rate(cfg, 10), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(cfg, 99), 0.1, 1e-12);
  EXPECT_LT(learning_rate(cfg, 11), 1.0);
  EXPECT_NEAR(learning_rate(cfg, 9), 1.0, 1e-12);  // warmup is never cut short
}

TEST(Schedule, ConstantAndInverseSqrt) {
  core::TrainConfig cfg;
  cfg.lr = 2.0;
  cfg.warmup_steps = 16;
  cfg.steps = 1000;
  cfg.lr_schedule = core::LrSchedule::kConstant;
  EXPECT_NEAR(learning_rate(cfg, 7), 1.0, 1e-12);
  EXPECT_NEAR(learning_rate(cfg, 16), 2.0, 1e-12);
  EXPECT_NEAR(learning_rate(cfg, 999), 2.0, 1e-12);
  cfg.lr_schedule = core::LrSchedule::kInverseSqrt;
  EXPECT_NEAR(learning_rate(cfg, 15), 2.0, 1e-12);  // the warmup's peak
  EXPECT_NEAR(learning_rate(cfg, 16), 2.0 * std::sqrt(16.0 / 17.0), 1e-12);
  EXPECT_NEAR(learning_rate(cfg, 63), 1.0, 1e-12);  // sqrt(16 / 64) = 1/2
  cfg.warmup_steps = 0;
  EXPECT_NEAR(learning_rate(cfg, 0), 2.0, 1e-12);
  EXPECT_NEAR(learning_rate(cfg, 3), 1.0, 1e-12);
}

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(core::crc32c("123456789", 9), 0xE3069283u);
  EXPECT_EQ(core::crc32c("", 0), 0u);
  const char zeros[32] = {};
  EXPECT_EQ(core::crc32c(zeros, 32), 0x8A9136AAu);  // RFC 3720 B.4
}

TEST(Metrics, JsonLines) {
  EXPECT_EQ(to_json(3, {{"loss", 1.5}, {"val_loss", std::nan("")}}), "{\"step\":3,\"loss\":1.5,\"val_loss\":null}");
}

TEST(Metrics, ExpertLoadsAreJsonArraysAndTensorBoardHistograms) {
  EXPECT_EQ(to_json(4, {{"loss", 1.5}}, {{"expert_load_moe0", {3, 0, 5}}}),
            "{\"step\":4,\"loss\":1.5,\"expert_load_moe0\":[3,0,5]}");
  const auto dir = fs::temp_directory_path() / ("switchyard_tb_histo_" + std::to_string(::getpid()));
  core::remove_tree(dir);
  { MetricsWriter(dir.string(), 0).write(7, {{"loss", 2.0}}, {{"expert_load_moe1", {3, 0, 5, 2}}}); }
  std::string events;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) events = e.path().string();
  const auto records = read_event_records(events);
  ASSERT_EQ(records.size(), 2u);
  tensorboard::Event e;
  ASSERT_TRUE(e.ParseFromString(records[1]));
  ASSERT_EQ(e.summary().value_size(), 2);
  const auto& v = e.summary().value(1);
  EXPECT_EQ(v.tag(), "expert_load_moe1");
  ASSERT_TRUE(v.has_histo());
  const auto& h = v.histo();
  // Bucket i covers (i - 0.5, i + 0.5]: expert i's slots.
  EXPECT_EQ(std::vector<double>(h.bucket().begin(), h.bucket().end()), (std::vector<double>{3, 0, 5, 2}));
  EXPECT_EQ(std::vector<double>(h.bucket_limit().begin(), h.bucket_limit().end()), (std::vector<double>{0.5, 1.5, 2.5, 3.5}));
  EXPECT_DOUBLE_EQ(h.num(), 10);
  EXPECT_DOUBLE_EQ(h.sum(), 0 * 3 + 2 * 5 + 3 * 2);
  EXPECT_DOUBLE_EQ(h.sum_squares(), 4 * 5 + 9 * 2);
  EXPECT_DOUBLE_EQ(h.max(), 3);
}

TEST(Metrics, TensorBoardRecordsCarryTheScalars) {
  const auto dir = fs::temp_directory_path() / ("switchyard_tb_" + std::to_string(::getpid()));
  core::remove_tree(dir);
  {
    MetricsWriter w(dir.string(), 0);
    w.write(1, {{"loss", 2.5}, {"lr", 0.001}});
    w.write(2, {{"loss", 2.25}});
  }
  std::string events;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) events = e.path().string();
  ASSERT_FALSE(events.empty());
  const auto records = read_event_records(events);
  ASSERT_EQ(records.size(), 3u);
  tensorboard::Event first, second;
  ASSERT_TRUE(first.ParseFromString(records[0]));
  EXPECT_EQ(first.file_version(), "brain.Event:2");
  ASSERT_TRUE(second.ParseFromString(records[1]));
  EXPECT_EQ(second.step(), 1);
  ASSERT_EQ(second.summary().value_size(), 2);
  EXPECT_EQ(second.summary().value(0).tag(), "loss");
  EXPECT_FLOAT_EQ(second.summary().value(0).simple_value(), 2.5f);
  // A flipped byte is caught by the record CRC.
  {
    std::fstream f(events, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.put('\x7f');
  }
  EXPECT_THROW(read_event_records(events), switchyard::DataError);
  // Resuming at step 1 drops later lines from metrics.jsonl.
  { MetricsWriter w(dir.string(), 1); }
  std::ifstream in(dir / "metrics.jsonl");
  std::string line, all;
  while (std::getline(in, line)) all += line + "\n";
  EXPECT_EQ(all, "{\"step\":1,\"loss\":2.5,\"lr\":0.001}\n");
}

}  // namespace
}  // namespace switchyard::trainer
