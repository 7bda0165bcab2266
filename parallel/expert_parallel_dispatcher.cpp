// Flat and hierarchical expert-parallel exchanges (see the layout notes in the header).
#include "parallel/expert_parallel_dispatcher.h"

#include <torch/torch.h>

#include <chrono>

#include "core/build_info.h"
#include "core/error.h"
#include "modules/moe_kernels.h"

#if SWITCHYARD_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace switchyard::parallel {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Origin key: (origin EP rank, token, slot) packed; slot is 0 when deduplicating.
constexpr int64_t kTokenShift = 8;
constexpr int64_t kRankShift = 40;

/// Peer classes for byte accounting: -1 self, 0 same node, 1 other node.
std::vector<int64_t> peer_classes(const Communicator& comm, const std::function<bool(int)>& remote) {
  std::vector<int64_t> cls(comm.size());
  for (int p = 0; p < comm.size(); ++p) cls[p] = p == comm.rank() ? -1 : (remote(p) ? 1 : 0);
  return cls;
}

void count_bytes(ExchangeStats* stats, const std::vector<int64_t>& peer_class, const std::vector<int64_t>& rows,
                 int64_t row_bytes) {
  for (size_t p = 0; p < rows.size(); ++p) {
    if (peer_class[p] == 0) stats->intra_node_bytes += rows[p] * row_bytes;
    if (peer_class[p] == 1) stats->inter_node_bytes += rows[p] * row_bytes;
  }
}

/// comm.all_to_all_v, its time added to stats->seconds. The current stream's queued work finishes
/// first, so it is not counted; only that stream: with parallel.overlap_chunks the exchanges run on a
/// side stream, and the experts on the main stream keep running meanwhile.
torch::Tensor timed_all_to_all(Communicator& comm, ExchangeStats* stats, const torch::Tensor& send,
                               const std::vector<int64_t>& send_counts, const std::vector<int64_t>& recv_counts) {
#if SWITCHYARD_WITH_CUDA
  if (send.is_cuda()) c10::cuda::getCurrentCUDAStream(send.device().index()).synchronize();
#endif
  const auto start = std::chrono::steady_clock::now();
  auto out = comm.all_to_all_v(send, send_counts, recv_counts);
  stats->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

std::vector<int64_t> timed_counts(Communicator& comm, ExchangeStats* stats, const std::vector<int64_t>& send_counts) {
  const auto start = std::chrono::steady_clock::now();
  auto out = comm.all_to_all_counts(send_counts);
  stats->seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

/// Row-aligned tensors [n, w_i] of any dtypes packed side by side as bytes [n, sum_i w_i * size_i],
/// so one collective carries them all.
torch::Tensor pack_rows(const std::vector<torch::Tensor>& parts) {
  std::vector<torch::Tensor> bytes;
  for (const auto& t : parts) {
    if (t.size(1) > 0) bytes.push_back(t.contiguous().view(torch::kUInt8));
  }
  return bytes.size() == 1 ? bytes[0] : torch::cat(bytes, 1);
}

/// The inverse of pack_rows for received rows: part i like `likes[i]` (dtype and width).
std::vector<torch::Tensor> unpack_rows(const torch::Tensor& packed, const std::vector<torch::Tensor>& likes) {
  std::vector<torch::Tensor> out;
  int64_t offset = 0;
  for (const auto& like : likes) {
    const int64_t width = like.size(1) * static_cast<int64_t>(like.element_size());
    if (width == 0) {
      out.push_back(like.new_empty({packed.size(0), 0}));
      continue;
    }
    // A part's bytes must start at a multiple of its element size to be viewed as its dtype. Narrowing
    // rows of several parts copies them (non-contiguous), but with one row (or one part) the view
    // keeps the byte offset, e.g. int64 metadata after d + k fp32 values with k odd.
    auto part = packed.narrow(1, offset, width);
    if (!part.is_contiguous() || part.storage_offset() % static_cast<int64_t>(like.element_size()) != 0) {
      part = part.clone(at::MemoryFormat::Contiguous);
    }
    out.push_back(part.view(like.scalar_type()));
    offset += width;
  }
  return out;
}

/// all_to_all_v of (rows, gates) with a metadata passenger (int64 [n, m], no gradient; may be
/// [n, 0]) as one collective and one autograd node: backward is the reverse exchange of both
/// gradients, again one collective, so every rank issues the backward collectives in the same order.
/// What the exchange's autograd node carries to its backward: the communicator and the statistics
/// it adds to (the dispatcher's, which outlives every step's graph).
struct ExchangeHandle : torch::CustomClassHolder {
  ExchangeHandle(Communicator& c, ExchangeStats& s) : comm(&c), stats(&s) {}
  Communicator* comm;
  ExchangeStats* stats;
};

class ExchangeFn : public torch::autograd::Function<ExchangeFn> {
 public:
  static variable_list forward(AutogradContext* ctx, torch::Tensor rows, torch::Tensor gates, torch::Tensor meta,
                               const c10::intrusive_ptr<ExchangeHandle>& handle, std::vector<int64_t> peer_class,
                               std::vector<int64_t> send_counts, std::vector<int64_t> recv_counts) {
    auto* comm = handle->comm;
    auto* stats = handle->stats;
    ctx->saved_data["handle"] = c10::IValue::make_capsule(handle);
    ctx->saved_data["class"] = peer_class;
    ctx->saved_data["send"] = send_counts;
    ctx->saved_data["recv"] = recv_counts;
    ctx->save_for_backward({rows.new_empty({0, rows.size(1)}), gates.new_empty({0, gates.size(1)})});
    const auto packed = pack_rows({rows, gates, meta});
    count_bytes(stats, peer_class, send_counts, packed.size(1));
    auto out = unpack_rows(timed_all_to_all(*comm, stats, packed, send_counts, recv_counts), {rows, gates, meta});
    ctx->mark_non_differentiable({out[2]});
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto handle = c10::static_intrusive_pointer_cast<ExchangeHandle>(ctx->saved_data["handle"].toCapsule());
    auto* comm = handle->comm;
    auto* stats = handle->stats;
    const auto send = ctx->saved_data["send"].toIntVector();
    const auto recv = ctx->saved_data["recv"].toIntVector();
    const auto peer_class = ctx->saved_data["class"].toIntVector();
    const auto like = ctx->get_saved_variables();
    int64_t recv_rows = 0;
    for (auto c : recv) recv_rows += c;
    auto grad_rows = grads[0].defined() ? grads[0] : like[0].new_zeros({recv_rows, like[0].size(1)});
    auto grad_gates = grads[1].defined() ? grads[1] : like[1].new_zeros({recv_rows, like[1].size(1)});
    const auto packed = pack_rows({grad_rows.to(like[0].scalar_type()), grad_gates.to(like[1].scalar_type())});
    count_bytes(stats, peer_class, recv, packed.size(1));
    auto back = unpack_rows(timed_all_to_all(*comm, stats, packed, recv, send), {like[0], like[1]});
    return {back[0], back[1], torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

/// Exchanges rows, their gates and (no gradient) their metadata in one collective: returns received
/// {rows, gates, meta}. The way back passes zero-width gates and metadata.
variable_list exchange(Communicator& comm, ExchangeStats& stats, const std::vector<int64_t>& peer_class,
                       const torch::Tensor& rows, const torch::Tensor& gates, const torch::Tensor& meta,
                       const std::vector<int64_t>& send, const std::vector<int64_t>& recv) {
  return ExchangeFn::apply(rows, gates, meta, c10::make_intrusive<ExchangeHandle>(comm, stats), peer_class, send, recv);
}

std::vector<int64_t> counts_per_group(const torch::Tensor& group_of_row, int64_t num_groups) {
  const auto c = torch::bincount(group_of_row.to(torch::kCPU), {}, num_groups);
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + num_groups);
}

/// Rows (each with up to k slots) expanded into per-group rows: one per (row, group) when
/// deduplicating, else one per slot. Output sorted by (group, row[, slot]).
struct Expanded {
  torch::Tensor source_row;  ///< [R] row each output row copies
  torch::Tensor group;       ///< [R]
  torch::Tensor slot_mask;   ///< [R, k] bool: slot j of the source row belongs to this output row
};

Expanded expand_rows(const torch::Tensor& slot_group /*[N, k], -1 unused*/, bool dedup) {
  const int64_t rows = slot_group.size(0), k = slot_group.size(1);
  const auto flat = slot_group.reshape({-1});
  const auto valid_slots = flat.ge(0).nonzero().reshape({-1});  // flat slot ids, ascending (row, slot)
  const auto row_of_slot = valid_slots.div(k, "floor");
  const auto j_of_slot = valid_slots.remainder(k);
  const auto g = flat.index_select(0, valid_slots);
  // Key orders by group, then row, then (without dedup) slot.
  const auto key = dedup ? g * rows + row_of_slot : (g * rows + row_of_slot) * k + j_of_slot;
  const auto [unique_keys, inverse, unused_counts] = at::_unique2(key, /*sorted=*/true, /*return_inverse=*/true, false);
  Expanded e;
  const auto unique_gr = dedup ? unique_keys : unique_keys.div(k, "floor");
  e.group = unique_gr.div(std::max<int64_t>(rows, 1), "floor");
  e.source_row = unique_gr.remainder(std::max<int64_t>(rows, 1));
  e.slot_mask = torch::zeros({unique_keys.size(0), k}, torch::dtype(torch::kBool).device(slot_group.device()));
  if (valid_slots.numel() > 0) e.slot_mask.index_put_({inverse, j_of_slot}, true);
  return e;
}

/// [num_source_rows, k]: each source row's expanded rows, each in the column of its first slot (-1:
/// none). Siblings hold disjoint slots, so no two share a column. The layout of the fused
/// permute / gather-sum kernels: sums over a row's expansions run in slot order, without atomics.
torch::Tensor expansion_table(const Expanded& e, int64_t num_source_rows, int64_t k) {
  if (e.source_row.numel() == 0) return torch::full({num_source_rows, k}, -1, e.source_row.options());
  const auto first_slot = e.slot_mask.to(torch::kInt64).argmax(1);
  return modules::kernels::rows_of_slots(e.source_row * k + first_slot, num_source_rows, k);
}

/// State kept between dispatch and combine.
struct EpState {
  // Origin side.
  torch::Tensor node_row_token;     ///< [Nr] token of each node row
  torch::Tensor token_node_rows;    ///< [T, k] expansion_table of the node rows
  // Flat: rank rows at the origin. Hierarchical: rank rows at the intermediate.
  torch::Tensor rank_row_node_row;  ///< [Rr] node row each rank row came from
  torch::Tensor node_rank_rows;     ///< [node rows there, k] expansion_table of the rank rows
  std::vector<int64_t> rank_send, rank_recv;
  std::vector<int64_t> node_send, node_recv;  ///< hierarchical stage one
  std::vector<int64_t> rank_class, node_class;
  // Destination.
  torch::Tensor canonical_order;    ///< [n] received row -> canonical position
  torch::Tensor slot_row;           ///< [S] canonical row of each expert slot
  torch::Tensor row_slots;          ///< [n, k] each canonical row's expert slots (rows_of_slots)
};

}  // namespace

ExpertParallelDispatcher::ExpertParallelDispatcher(std::shared_ptr<ProcessGroups> groups, placement::ExpertPlacement placement,
                                                   core::DispatcherKind kind, bool dedup, bool every_slot_routed)
    : groups_(std::move(groups)), placement_(std::move(placement)), kind_(kind), dedup_(dedup),
      stats_(std::make_shared<ExchangeStats>()) {
  // One rank holds every expert, at local index = expert id (a rank's experts are in id order).
  if (groups_->ep_size == 1) {
    single_rank_ = std::make_unique<modules::LocalDispatcher>(placement_.num_experts(), every_slot_routed);
  }
  SY_CHECK_AS(ConfigError, placement_.experts_per_rank() * groups_->ep_size == placement_.num_experts(),
              "placement: expects ", groups_->ep_size, " expert-parallel ranks");
  SY_CHECK_AS(ConfigError, kind_ == core::DispatcherKind::kFlat || groups_->ep_ranks_per_node > 0,
              "parallel.dispatcher: hierarchical needs nodes aligned with the expert-parallel group");
}

std::vector<int64_t> ExpertParallelDispatcher::local_expert_ids() const { return placement_.experts_of(groups_->ep_rank); }

torch::Tensor ExpertParallelDispatcher::node_local_expert_mask() const {
  auto mask = torch::zeros({placement_.num_experts()}, torch::kBool);
  for (int64_t e = 0; e < placement_.num_experts(); ++e) {
    mask[e] = !groups_->ep_peer_is_remote(static_cast<int>(placement_.owner(e)));
  }
  return mask;
}

modules::Dispatched ExpertParallelDispatcher::dispatch(const torch::Tensor& x, const torch::Tensor& expert_idx,
                                                       const torch::Tensor& gates) {
  if (single_rank_) return single_rank_->dispatch(x, expert_idx, gates);
  const auto device = x.device();
  const int64_t num_tokens = x.size(0), k = expert_idx.size(1);
  const int64_t local_experts = placement_.experts_per_rank();
  const bool flat = kind_ == core::DispatcherKind::kFlat;
  // Flat with unaligned nodes: treat the whole EP group as one "node" for the row structure.
  const int64_t per_node = groups_->ep_ranks_per_node > 0 ? groups_->ep_ranks_per_node : groups_->ep_size;
  const int64_t num_nodes = groups_->ep_size / per_node;
  auto state = std::make_shared<EpState>();

  const auto owners = torch::tensor(placement_.owners(), torch::kInt64).to(device);
  const auto locals = torch::tensor(placement_.local_indices(), torch::kInt64).to(device);
  const auto valid = expert_idx.ge(0);
  const auto e = expert_idx.clamp_min(0);
  const auto dest = owners.index_select(0, e.reshape({-1})).view_as(e);  // EP rank per slot
  const auto target = (dest.remainder(per_node) * local_experts + locals.index_select(0, e.reshape({-1})).view_as(e))
                          .masked_fill(valid.logical_not(), -1);  // local rank * L + local expert
  const auto slot_node = dest.div(per_node, "floor").masked_fill(valid.logical_not(), -1);

  // Node rows: (node, token), sorted; they carry gates and targets of the slots bound for that node.
  const auto node_rows = expand_rows(slot_node, dedup_);
  state->node_row_token = node_rows.source_row;
  state->token_node_rows = expansion_table(node_rows, num_tokens, k);
  const auto node_x = modules::kernels::permute(x, node_rows.source_row, state->token_node_rows);
  const auto node_gates = modules::kernels::permute(gates, node_rows.source_row, state->token_node_rows) *
                          node_rows.slot_mask.to(gates.scalar_type());
  const auto node_target = target.index_select(0, node_rows.source_row).masked_fill(node_rows.slot_mask.logical_not(), -1);
  const int64_t my_rank = groups_->ep_rank;
  torch::Tensor origin = node_rows.source_row * (int64_t{1} << kTokenShift) + (my_rank << kRankShift);
  if (!dedup_) {
    // Without dedup each row holds exactly one slot: add the slot to keep origin keys unique.
    origin = origin + node_rows.slot_mask.to(torch::kInt64).argmax(1);
  }

  // Stage one (hierarchical only): node rows across nodes, to the peer with this local rank.
  torch::Tensor mid_x = node_x, mid_gates = node_gates, mid_target = node_target, mid_origin = origin;
  torch::Tensor mid_group;  // node index of each node row, for rank-row destinations
  if (!flat) {
    auto& inter = *groups_->ep_inter_node;
    state->node_class = peer_classes(inter, [](int) { return true; });
    state->node_send = counts_per_group(node_rows.group, num_nodes);
    state->node_recv = timed_counts(inter, stats_.get(), state->node_send);
    const auto meta = torch::cat({node_target, origin.unsqueeze(1)}, 1);
    auto recv = exchange(inter, *stats_, state->node_class, node_x, node_gates, meta, state->node_send, state->node_recv);
    const auto& recv_meta = recv[2];
    mid_x = recv[0];
    mid_gates = recv[1];
    mid_target = recv_meta.narrow(1, 0, k);
    mid_origin = recv_meta.select(1, k);
    mid_group = torch::zeros({mid_x.size(0)}, torch::dtype(torch::kInt64).device(device));
  } else {
    mid_group = node_rows.group;
  }

  // Rank rows: node rows expanded per destination local rank, grouped by destination.
  const auto slot_local_rank = torch::where(mid_target.ge(0), mid_target.div(local_experts, "floor"), mid_target);
  const auto slot_dest = torch::where(mid_target.ge(0), mid_group.unsqueeze(1) * per_node + slot_local_rank, mid_target);
  const int64_t num_dest = flat ? groups_->ep_size : per_node;
  const auto dest_in_comm = flat ? slot_dest : slot_local_rank;
  const auto rank_rows = expand_rows(dest_in_comm, dedup_);
  state->rank_row_node_row = rank_rows.source_row;
  state->node_rank_rows = expansion_table(rank_rows, mid_x.size(0), k);
  const auto rank_x = modules::kernels::permute(mid_x, rank_rows.source_row, state->node_rank_rows);
  const auto rank_gates = modules::kernels::permute(mid_gates, rank_rows.source_row, state->node_rank_rows) *
                          rank_rows.slot_mask.to(mid_gates.scalar_type());
  const auto rank_local = mid_target.index_select(0, rank_rows.source_row)
                              .remainder(local_experts)
                              .masked_fill(rank_rows.slot_mask.logical_not(), -1);
  const auto rank_origin = mid_origin.index_select(0, rank_rows.source_row);

  // Stage two (hierarchical) or the one exchange (flat).
  auto& comm = flat ? *groups_->ep : *groups_->ep_intra_node;
  if (flat) {
    state->rank_class = peer_classes(comm, [this](int p) { return groups_->ep_peer_is_remote(p); });
  } else {
    state->rank_class = peer_classes(comm, [](int) { return false; });
  }
  state->rank_send = counts_per_group(rank_rows.group, num_dest);
  state->rank_recv = timed_counts(comm, stats_.get(), state->rank_send);
  const auto meta = torch::cat({rank_local, rank_origin.unsqueeze(1)}, 1);
  auto recv = exchange(comm, *stats_, state->rank_class, rank_x, rank_gates, meta, state->rank_send, state->rank_recv);
  const auto& recv_meta = recv[2];

  // Destination: canonical row order (by origin key), then slots grouped by local expert.
  const auto recv_local = recv_meta.narrow(1, 0, k);
  const auto recv_origin = recv_meta.select(1, k);
  state->canonical_order = std::get<1>(recv_origin.sort(/*stable=*/true, 0, false));
  const auto rows_x = recv[0].index_select(0, state->canonical_order);
  const auto rows_gates = recv[1].index_select(0, state->canonical_order);
  const auto slots = modules::sort_slots_by_expert(recv_local.index_select(0, state->canonical_order), local_experts);
  state->slot_row = slots.token_idx;
  state->row_slots = slots.row_of_slot;

  modules::Dispatched d;
  d.tokens = modules::kernels::permute(rows_x, slots.token_idx, state->row_slots);
  d.slot_gates = rows_gates.reshape({-1}).index_select(0, slots.slot_idx);
  d.tokens_per_expert = slots.counts;
  d.state = state;
  return d;
}

torch::Tensor ExpertParallelDispatcher::combine_weighted(const torch::Tensor& expert_out, const torch::Tensor& gates,
                                                         const modules::Dispatched& dispatched) {
  if (single_rank_) return single_rank_->combine_weighted(expert_out, gates, dispatched);
  const auto& state = *static_cast<const EpState*>(dispatched.state.get());
  return combine_rows(modules::kernels::unpermute(expert_out, gates, state.slot_row, state.row_slots), dispatched);
}

torch::Tensor ExpertParallelDispatcher::combine_rows(const torch::Tensor& canonical,
                                                     const modules::Dispatched& dispatched) {
  // Every sum here and in the callers is a gather-sum in slot order (no atomics): deterministic, and
  // the same in flat and hierarchical.
  const auto& state = *static_cast<const EpState*>(dispatched.state.get());
  const bool flat = kind_ == core::DispatcherKind::kFlat;
  const auto arrival = torch::zeros_like(canonical).index_copy(0, state.canonical_order, canonical);
  auto& comm = flat ? *groups_->ep : *groups_->ep_intra_node;
  const auto none = [](const torch::Tensor& rows) { return rows.new_empty({rows.size(0), 0}); };
  const auto back = exchange(comm, *stats_, state.rank_class, arrival, none(arrival), none(arrival).to(torch::kInt64),
                             state.rank_recv, state.rank_send)[0];
  // Rank rows into their node rows, then node rows into tokens.
  auto node_out = modules::kernels::sum_rows(back, state.rank_row_node_row, state.node_rank_rows);
  if (!flat) {
    node_out = exchange(*groups_->ep_inter_node, *stats_, state.node_class, node_out, none(node_out),
                        none(node_out).to(torch::kInt64), state.node_recv, state.node_send)[0];
  }
  return modules::kernels::sum_rows(node_out, state.node_row_token, state.token_node_rows);
}

}  // namespace switchyard::parallel
