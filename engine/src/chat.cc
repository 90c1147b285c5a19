// The chat formats as sequences of renderer-owned special ids and plain-text sections. Each
// section is encoded on its own, exactly as HF tokenizes the whole rendered string (special
// tokens split it into the same sections) when the content holds no special-token strings.
#include "adaptd/engine/chat.h"

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "unicode.h"

namespace adaptd::engine {
namespace {

constexpr const char* kChatmlTokens[] = {"<|im_start|>", "<|im_end|>"};
constexpr const char* kLlama3Tokens[] = {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};

bool HasAll(const Tokenizer& t, absl::Span<const char* const> tokens) {
  for (const char* s : tokens) {
    if (!t.TokenId(s)) return false;
  }
  return true;
}

// Python's str.isspace(): White_Space and the information separators U+001C..U+001F.
bool IsPythonSpace(uint32_t cp) { return unicode::IsWhitespace(cp) || (cp >= 0x1C && cp <= 0x1F); }

// HF's Jinja `trim` (Python's str.strip()) of valid UTF-8.
std::string_view Trim(std::string_view s) {
  size_t begin = 0;
  for (size_t i = 0; i < s.size() && IsPythonSpace(unicode::Next(s, &i));) begin = i;
  size_t end = begin;
  for (size_t i = begin; i < s.size();) {
    if (!IsPythonSpace(unicode::Next(s, &i))) end = i;
  }
  return s.substr(begin, end - begin);
}

}  // namespace

absl::StatusOr<ChatFormat> ParseChatFormat(std::string_view name) {
  if (name == "raw") return ChatFormat::kRaw;
  if (name == "chatml") return ChatFormat::kChatml;
  if (name == "qwen3") return ChatFormat::kQwen3;
  if (name == "llama3") return ChatFormat::kLlama3;
  return absl::InvalidArgumentError(absl::StrCat("chat format '", std::string(name), "' (raw, chatml, qwen3, llama3)"));
}

std::string_view ChatFormatName(ChatFormat format) {
  switch (format) {
    case ChatFormat::kChatml:
      return "chatml";
    case ChatFormat::kQwen3:
      return "qwen3";
    case ChatFormat::kLlama3:
      return "llama3";
    case ChatFormat::kRaw:
      break;
  }
  return "raw";
}

std::string DefaultSystemPrompt(std::string_view t) {
  // The first system message written as a literal (templates also render the client's own
  // system message, as an expression, often before the default).
  for (std::string_view open : {"<|im_start|>system\n", "<|im_start|>system\\n"}) {
    for (size_t at = t.find(open); at != std::string_view::npos; at = t.find(open, at + 1)) {
      const size_t begin = at + open.size(), end = t.find("<|im_end|>", begin);
      if (end == std::string_view::npos) break;
      std::string_view text = t.substr(begin, end - begin);
      if (!text.empty() && text.find_first_of("'\"{}\\") == std::string_view::npos) return std::string(text);
    }
  }
  return "";
}

ChatFormat DetectChatFormat(const Tokenizer& tokenizer) {
  // Qwen3's template differs from plain ChatML by its think blocks, whose tokens it has.
  if (HasAll(tokenizer, kChatmlTokens)) return tokenizer.TokenId("<think>") ? ChatFormat::kQwen3 : ChatFormat::kChatml;
  if (HasAll(tokenizer, kLlama3Tokens)) return ChatFormat::kLlama3;
  return ChatFormat::kRaw;
}

absl::StatusOr<ChatRenderer> ChatRenderer::Create(const Tokenizer& tokenizer, ChatFormat format, ChatOptions options) {
  ChatRenderer r(tokenizer, format, options);
  absl::Span<const char* const> needed;
  if (format == ChatFormat::kQwen3 || format == ChatFormat::kChatml) needed = kChatmlTokens;
  if (format == ChatFormat::kLlama3) needed = kLlama3Tokens;
  for (const char* s : needed) {
    auto id = tokenizer.TokenId(s);
    // Only a special token is safe as a delimiter: text never becomes one.
    if (!id || !tokenizer.IsSpecial(*id)) {
      return absl::FailedPreconditionError(absl::StrCat("chat format ", std::string(ChatFormatName(format)),
                                                        " needs the special token ", s, ", which the tokenizer lacks"));
    }
    r.special_.push_back(*id);
  }
  // Ends of text the model may emit instead of the end of its turn.
  for (const char* s : {"<|endoftext|>", "<|end_of_text|>", "<|eom_id|>"}) {
    if (auto id = tokenizer.TokenId(s); id && tokenizer.IsSpecial(*id)) r.extra_stops_.push_back(*id);
  }
  return r;
}

absl::Status ChatRenderer::AppendText(std::string_view text, std::vector<int32_t>* ids) const {
  auto t = tokenizer_->Encode(text, /*parse_special=*/false);
  if (!t.ok()) return t.status();
  ids->insert(ids->end(), t->begin(), t->end());
  return absl::OkStatus();
}

absl::Status ChatRenderer::AppendMessage(const ChatMessage& m, std::vector<int32_t>* ids) const {
  if (m.role != "system" && m.role != "user" && m.role != "assistant") {
    return absl::InvalidArgumentError(absl::StrCat("message role '", m.role, "' (system, user or assistant)"));
  }
  switch (format_) {
    case ChatFormat::kRaw:
      return AppendText(m.content, ids);
    case ChatFormat::kChatml:
    case ChatFormat::kQwen3:  // <|im_start|>{role}\n{content}<|im_end|>\n
      ids->push_back(special_[0]);
      if (auto s = AppendText(absl::StrCat(m.role, "\n", m.content), ids); !s.ok()) return s;
      ids->push_back(special_[1]);
      return AppendText("\n", ids);
    case ChatFormat::kLlama3:  // <|start_header_id|>{role}<|end_header_id|>\n\n{content|trim}<|eot_id|>
      if (!unicode::IsValidUtf8(m.content)) return absl::InvalidArgumentError("message content is not valid UTF-8");
      ids->push_back(special_[1]);
      if (auto s = AppendText(m.role, ids); !s.ok()) return s;
      ids->push_back(special_[2]);
      if (auto s = AppendText(absl::StrCat("\n\n", std::string(Trim(m.content))), ids); !s.ok()) return s;
      ids->push_back(special_[3]);
      return absl::OkStatus();
  }
  return absl::InternalError("unknown chat format");
}

absl::Status ChatRenderer::AppendGenerationPrompt(std::vector<int32_t>* ids) const {
  switch (format_) {
    case ChatFormat::kRaw:
      return absl::OkStatus();
    case ChatFormat::kChatml:
      ids->push_back(special_[0]);
      return AppendText("assistant\n", ids);
    case ChatFormat::kQwen3:
      ids->push_back(special_[0]);
      return AppendText(options_.enable_thinking ? "assistant\n" : "assistant\n<think>\n\n</think>\n\n", ids);
    case ChatFormat::kLlama3:
      ids->push_back(special_[1]);
      if (auto s = AppendText("assistant", ids); !s.ok()) return s;
      ids->push_back(special_[2]);
      return AppendText("\n\n", ids);
  }
  return absl::InternalError("unknown chat format");
}

absl::StatusOr<std::vector<int32_t>> ChatRenderer::Render(absl::Span<const ChatMessage> messages, bool first,
                                                          bool generation_prompt,
                                                          std::vector<size_t>* message_ends) const {
  if (messages.empty()) return absl::InvalidArgumentError("a conversation turn needs at least one message");
  std::vector<int32_t> ids;
  if (first && format_ == ChatFormat::kLlama3) ids.push_back(special_[0]);
  if (message_ends != nullptr) message_ends->clear();
  for (const auto& m : messages) {
    if (auto s = AppendMessage(m, &ids); !s.ok()) return s;
    if (message_ends != nullptr) message_ends->push_back(ids.size());
  }
  if (generation_prompt) {
    if (auto s = AppendGenerationPrompt(&ids); !s.ok()) return s;
  }
  return ids;
}

std::vector<int32_t> ChatRenderer::AssistantEnd() const {
  switch (format_) {
    case ChatFormat::kChatml:
    case ChatFormat::kQwen3: {
      std::vector<int32_t> ids{special_[1]};
      (void)AppendText("\n", &ids);
      return ids;
    }
    case ChatFormat::kLlama3:
      return {special_[3]};
    case ChatFormat::kRaw:
      break;
  }
  return {};
}

std::vector<int32_t> ChatRenderer::StopIds() const {
  std::vector<int32_t> ids;
  if (format_ == ChatFormat::kQwen3 || format_ == ChatFormat::kChatml) ids.push_back(special_[1]);
  if (format_ == ChatFormat::kLlama3) ids.push_back(special_[3]);
  ids.insert(ids.end(), extra_stops_.begin(), extra_stops_.end());
  return ids;
}

StopStringMatcher::Result StopStringMatcher::Add(std::string_view piece) {
  Result r;
  if (stopped_) {
    r.stopped = true;
    return r;
  }
  held_.append(piece.data(), piece.size());
  size_t first = std::string::npos;  // earliest complete stop string
  for (const auto& s : stops_) {
    if (s.empty()) continue;
    first = std::min(first, held_.find(s));
  }
  if (first != std::string::npos) {
    r.text = held_.substr(0, first);
    r.stopped = stopped_ = true;
    held_.clear();
    return r;
  }
  size_t keep = 0;  // the longest tail of held_ that begins some stop string
  for (const auto& s : stops_) {
    for (size_t n = std::min(s.size() - (s.empty() ? 0 : 1), held_.size()); n > keep; --n) {
      if (held_.compare(held_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  r.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return r;
}

std::string StopStringMatcher::Finish() {
  std::string rest = stopped_ ? std::string() : held_;
  held_.clear();
  return rest;
}

}  // namespace adaptd::engine
