#include "core/json_input.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>
#include <vector>

#include <llvm/Support/ConvertUTF.h>

namespace bqjit {

namespace {

using json = nlohmann::json;

// "65536 bytes (64 KiB)".
std::string sizeText(size_t bytes) {
  std::string out = std::to_string(bytes) + " bytes";
  if (bytes >= 1024 * 1024 && bytes % (1024 * 1024) == 0)
    out += " (" + std::to_string(bytes / (1024 * 1024)) + " MiB)";
  else if (bytes >= 1024 && bytes % 1024 == 0)
    out += " (" + std::to_string(bytes / 1024) + " KiB)";
  return out;
}

// The first `maxChars` bytes of `text` (valid UTF-8), not splitting a
// character, then "..." and, when totalBytes > 0, " (N bytes)"; `text`
// itself when short enough.
std::string cut(std::string text, size_t totalBytes, size_t maxChars) {
  if (text.size() <= maxChars)
    return text;
  size_t end = maxChars;
  while (end > 0 && (static_cast<unsigned char>(text[end]) & 0xC0) == 0x80)
    --end; // text[end] continues a character: cut before its first byte
  text.resize(end);
  return text + "..." + (totalBytes > 0 ? " (" + std::to_string(totalBytes) + " bytes)" : "");
}

// A key as one step of a path: `.name` for plain names, `["..."]` otherwise.
std::string pathStep(const std::string& key) {
  const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
  return plain ? "." + key : "[" + shownJson(json(key)) + "]";
}

// Builds the value from the parser's events (nlohmann's SAX interface) on an
// explicit stack, refusing a container deeper than the limit and a key that
// an object already has. Nothing here recurses.
class BoundedBuilder final : public nlohmann::json_sax<json> {
public:
  explicit BoundedBuilder(int maxDepth) : maxDepth_(maxDepth) {}

  bool null() override { return put(json(nullptr)); }
  bool boolean(bool v) override { return put(json(v)); }
  bool number_integer(number_integer_t v) override { return put(json(v)); }
  bool number_unsigned(number_unsigned_t v) override { return put(json(v)); }
  bool number_float(number_float_t v, const string_t&) override { return put(json(v)); }
  bool string(string_t& v) override { return put(json(std::move(v))); }
  bool binary(binary_t& v) override { return put(json(std::move(v))); }
  bool start_object(std::size_t) override { return open(json::object()); }
  bool start_array(std::size_t) override { return open(json::array()); }
  bool end_object() override { return close(); }
  bool end_array() override { return close(); }

  bool key(string_t& k) override {
    if (open_.back()->contains(k)) {
      failure_ = Failure::RepeatedKey;
      repeatedKey_ = k;
      place_ = path(false);
      return false;
    }
    keys_.back() = std::move(k);
    return true;
  }

  bool parse_error(std::size_t position, const std::string& lastToken,
                   const nlohmann::detail::exception& ex) override {
    failure_ = Failure::Syntax;
    position_ = position;
    lastToken_ = lastToken;
    exceptionId_ = ex.id;
    exceptionText_ = ex.what();
    return false;
  }

  enum class Failure { None, Syntax, TooDeep, RepeatedKey };
  Failure failure() const { return failure_; }
  json& root() { return root_; }
  const std::string& place() const { return place_; }
  const std::string& repeatedKey() const { return repeatedKey_; }
  size_t position() const { return position_; }
  const std::string& lastToken() const { return lastToken_; }
  int exceptionId() const { return exceptionId_; }
  const std::string& exceptionText() const { return exceptionText_; }

private:
  // Where the value being added goes: the root, the end of the innermost
  // array, or the innermost object under its pending key.
  json& slot() {
    if (open_.empty())
      return root_;
    json& parent = *open_.back();
    if (parent.is_array()) {
      parent.push_back(json());
      return parent.back();
    }
    return parent[keys_.back()];
  }

  bool put(json&& v) {
    slot() = std::move(v);
    return true;
  }

  bool open(json&& container) {
    if (static_cast<int>(open_.size()) >= maxDepth_) {
      failure_ = Failure::TooDeep;
      place_ = path(true);
      return false;
    }
    json& s = slot();
    s = std::move(container);
    // Stable: only the innermost container grows while it is open, and an
    // array's elements move only when it grows.
    open_.push_back(&s);
    keys_.emplace_back();
    return true;
  }

  bool close() {
    open_.pop_back();
    keys_.pop_back();
    return true;
  }

  // The path of the innermost open container, e.g. "specs[3].launch", and
  // with `slot` the place inside it that is being filled.
  std::string path(bool slot) const {
    std::string out;
    const size_t n = open_.size();
    for (size_t i = 0; i < n; ++i) {
      if (i + 1 == n && !slot)
        break;
      const json& c = *open_[i];
      // An open array holds its open child last; a slot is past the end.
      if (c.is_array())
        out += "[" + std::to_string(i + 1 < n ? c.size() - 1 : c.size()) + "]";
      else
        out += pathStep(keys_[i]);
    }
    if (!out.empty() && out[0] == '.')
      out.erase(0, 1);
    return out.empty() ? "the top-level object" : out;
  }

  int maxDepth_;
  json root_;
  std::vector<json*> open_;       // the open containers, outermost first
  std::vector<std::string> keys_; // per open container: the pending key (objects)
  Failure failure_ = Failure::None;
  std::string place_;
  std::string repeatedKey_;
  size_t position_ = 0;
  std::string lastToken_;
  int exceptionId_ = 0;
  std::string exceptionText_;
};

// The byte (from 1) of the bracket that opens level maxDepth + 1, or 0.
// Called on text that the parser read without error up to that bracket.
size_t tooDeepAt(llvm::StringRef text, int maxDepth) {
  int depth = 0;
  bool inString = false, escaped = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (inString) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        inString = false;
    } else if (c == '"') {
      inString = true;
    } else if (c == '{' || c == '[') {
      if (++depth > maxDepth)
        return i + 1;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return 0;
}

// The parser's complaint in plain words: where, then what.
std::string syntaxProblem(const BoundedBuilder& b) {
  if (b.exceptionId() == 406) { // out_of_range: a number beyond a double
    // The position is the number's last byte; say where it starts.
    const size_t length = b.lastToken().size();
    const size_t start = b.position() >= length ? b.position() - length + 1 : b.position();
    return "at byte " + std::to_string(start) + ": the number " + shownText(b.lastToken(), 60) +
           " is too large (beyond the range of a double)";
  }
  // "[json.exception.parse_error.101] parse error at line 1, column 5: syntax error ..."
  std::string text = b.exceptionText();
  if (const size_t close = text.find("] ");
      text.rfind("[json.exception.", 0) == 0 && close != text.npos)
    text.erase(0, close + 2);
  std::string where = "at byte " + std::to_string(b.position());
  const std::string prefix = "parse error at ";
  if (text.rfind(prefix, 0) == 0) {
    const size_t colon = text.find(": ");
    if (colon != text.npos) {
      where = "at " + text.substr(prefix.size(), colon - prefix.size()) + " (byte " +
              std::to_string(b.position()) + ")";
      text.erase(0, colon + 2);
    }
  } else if (text.rfind("parse error: ", 0) == 0) {
    text.erase(0, 13);
  }
  return where + ": " + shownText(text, 2 * kShownChars);
}

} // namespace

llvm::Expected<json> parseJsonInput(llvm::StringRef text, const JsonLimits& limits,
                                    llvm::StringRef what, ErrorCode code) {
  const std::string name = what.str();
  if (text.size() > limits.maxBytes)
    return makeError(code, name + ": " + std::to_string(text.size()) +
                               " bytes is over the limit of " + sizeText(limits.maxBytes));
  if (text.find_first_not_of(" \t\r\n") == llvm::StringRef::npos)
    return makeError(code, name + ": not valid JSON: the text is " +
                               (text.empty() ? "empty" : "only white space"));
  BoundedBuilder builder(limits.maxDepth);
  const bool ok = json::sax_parse(text.begin(), text.end(), &builder, json::input_format_t::json,
                                  /*strict=*/true, /*ignore_comments=*/false);
  if (ok && builder.failure() == BoundedBuilder::Failure::None)
    return std::move(builder.root());
  switch (builder.failure()) {
  case BoundedBuilder::Failure::Syntax:
    return makeError(code, name + ": not valid JSON " + syntaxProblem(builder));
  case BoundedBuilder::Failure::TooDeep: {
    const size_t at = tooDeepAt(text, limits.maxDepth);
    return makeError(code, name + ": arrays and objects nested more than " +
                               std::to_string(limits.maxDepth) + " levels deep" +
                               (at ? " at byte " + std::to_string(at) : std::string()) + " (in " +
                               cut(builder.place(), 0, 60) + "); the limit is " +
                               std::to_string(limits.maxDepth) + " levels");
  }
  case BoundedBuilder::Failure::RepeatedKey:
    return makeError(code, name + ": the key " + shownJson(json(builder.repeatedKey())) +
                               " appears twice in " + shownText(builder.place()) +
                               "; a key may appear only once in an object");
  case BoundedBuilder::Failure::None:
    break;
  }
  return makeError(ErrorCode::Internal, name + ": the JSON parser stopped without saying why");
}

std::string shownText(llvm::StringRef text, size_t maxChars) {
  std::string out;
  out.reserve(std::min(text.size(), maxChars + 8));
  size_t i = 0;
  // Only as much as can be shown (a few bytes more, for the last character).
  while (i < text.size() && out.size() <= maxChars) {
    const auto* p = reinterpret_cast<const llvm::UTF8*>(text.data() + i);
    const auto* end = reinterpret_cast<const llvm::UTF8*>(text.data() + text.size());
    const unsigned char c = *p;
    if (c < 0x20 || c == 0x7F) {
      // Control characters would break the message's lines.
      char escape[8];
      std::snprintf(escape, sizeof escape, "\\x%02x", c);
      out += c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : escape;
      ++i;
    } else if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
    } else if (llvm::isLegalUTF8Sequence(p, end)) {
      const unsigned n = llvm::getNumBytesForUTF8(c);
      out.append(text.data() + i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD"; // U+FFFD
      ++i;
    }
  }
  // The loop stopped at the end or past maxChars: cut() then cuts.
  return cut(std::move(out), text.size(), maxChars);
}

std::string shownJson(const json& value, size_t maxChars) {
  const int depth = jsonDepth(value);
  if (depth > kJsonMaxDepth)
    return std::string("(") + (value.is_array() ? "an array" : "an object") + " nested more than " +
           std::to_string(kJsonMaxDepth) + " levels deep, not shown)";
  // Shallow: dump() recurses at most kJsonMaxDepth levels. Strings built by
  // a C++ caller (or from the command line) may hold invalid UTF-8, on which
  // a plain dump() throws; such bytes become U+FFFD.
  const std::string text = jsonText(value);
  return cut(text, text.size(), maxChars);
}

std::string jsonText(const json& value, int indent) {
  return value.dump(indent, ' ', false, json::error_handler_t::replace);
}

int jsonDepth(const json& value, int stopAbove) {
  if (!value.is_structured())
    return 0;
  std::vector<std::pair<const json*, int>> todo{{&value, 1}};
  int deepest = 0;
  while (!todo.empty()) {
    const auto [v, d] = todo.back();
    todo.pop_back();
    deepest = std::max(deepest, d);
    if (d > stopAbove)
      return d;
    for (const json& child : *v)
      if (child.is_structured())
        todo.emplace_back(&child, d + 1);
  }
  return deepest;
}

} // namespace bqjit
