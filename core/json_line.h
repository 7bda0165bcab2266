// One JSON object on one line, built key by key in order (report lines of the CLI, metrics.jsonl).
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace switchyard::core {

class JsonLine {
 public:
  /// `%.*g` with `digits` significant digits; non-finite values become null.
  JsonLine& add(std::string_view key, double value, int digits = 9);
  JsonLine& add(std::string_view key, int64_t value);
  JsonLine& add(std::string_view key, int value) { return add(key, static_cast<int64_t>(value)); }
  JsonLine& add(std::string_view key, bool value);
  /// A JSON array of numbers (`%.*g`, non-finite as null).
  JsonLine& add(std::string_view key, const std::vector<double>& values, int digits = 9);
  /// Escaped as a JSON string.
  JsonLine& add(std::string_view key, std::string_view value);
  JsonLine& add(std::string_view key, const char* value) { return add(key, std::string_view(value)); }
  JsonLine& add(std::string_view key, const std::string& value) { return add(key, std::string_view(value)); }
  std::string str() const { return text_ + "}"; }

 private:
  std::string text_ = "{";
  void key(std::string_view k);
};

/// `text` as a quoted JSON string.
std::string json_quote(std::string_view text);

}  // namespace switchyard::core
