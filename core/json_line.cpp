#include "core/json_line.h"

#include <cmath>
#include <cstdio>

namespace switchyard::core {

std::string json_quote(std::string_view text) {
  std::string out = "\"";
  for (const char c : text) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", static_cast<unsigned char>(c));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

void JsonLine::key(std::string_view k) {
  if (text_.size() > 1) text_ += ',';
  text_ += json_quote(k);
  text_ += ':';
}

JsonLine& JsonLine::add(std::string_view k, double value, int digits) {
  key(k);
  if (!std::isfinite(value)) {
    text_ += "null";
    return *this;
  }
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.*g", digits, value);
  text_ += buf;
  return *this;
}

JsonLine& JsonLine::add(std::string_view k, const std::vector<double>& values, int digits) {
  key(k);
  text_ += '[';
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) text_ += ',';
    if (!std::isfinite(values[i])) {
      text_ += "null";
      continue;
    }
    char buf[40];
    std::snprintf(buf, sizeof(buf), "%.*g", digits, values[i]);
    text_ += buf;
  }
  text_ += ']';
  return *this;
}

JsonLine& JsonLine::add(std::string_view k, int64_t value) {
  key(k);
  text_ += std::to_string(value);
  return *this;
}

JsonLine& JsonLine::add(std::string_view k, bool value) {
  key(k);
  text_ += value ? "true" : "false";
  return *this;
}

JsonLine& JsonLine::add(std::string_view k, std::string_view value) {
  key(k);
  text_ += json_quote(value);
  return *this;
}

}  // namespace switchyard::core
