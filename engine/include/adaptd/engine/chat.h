// Conversations to token ids: plain ChatML, Qwen3's ChatML, Llama-3 and `raw`, rendered
// append-only so that a multi-turn session feeds exactly the tokens of the whole conversation
// rendered at once (paper.md §5.6): a turn renders only its new messages (and the generation
// prompt), never re-renders or strips earlier ones (no removal of past <think> blocks).
//
// Template-injection safety: only the renderer emits special tokens; message content is
// encoded as plain text, so "<|im_start|>" typed by a user stays characters.
//
// Threading: a ChatRenderer is immutable and may be shared; it must not outlive its Tokenizer.
#ifndef ADAPTD_ENGINE_CHAT_H_
#define ADAPTD_ENGINE_CHAT_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "adaptd/engine/tokenizer.h"

namespace adaptd::engine {

enum class ChatFormat { kRaw, kChatml, kQwen3, kLlama3 };

// "raw", "chatml", "qwen3", "llama3"; INVALID_ARGUMENT otherwise.
absl::StatusOr<ChatFormat> ParseChatFormat(std::string_view name);
std::string_view ChatFormatName(ChatFormat format);
// The format a checkpoint's tokenizer was made for: ChatML tokens -> qwen3 with a <think>
// token, else chatml (SmolLM2); Llama-3 header tokens -> llama3; else raw.
ChatFormat DetectChatFormat(const Tokenizer& tokenizer);

// The system prompt a ChatML template inserts when a conversation has none (SmolLM2's "You are
// a helpful AI assistant named SmolLM, ..."): the literal text of its
// '<|im_start|>system\n...<|im_end|>' string; empty when the template writes none.
std::string DefaultSystemPrompt(std::string_view chat_template);

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

struct ChatOptions {
  // Qwen3: false appends an empty <think></think> block to the generation prompt, as Qwen3's
  // template does, so the model answers without reasoning.
  bool enable_thinking = true;
};

class ChatRenderer {
 public:
  // FAILED_PRECONDITION when the tokenizer lacks a special token the format needs (present
  // but not special does not count: user text could then produce it).
  static absl::StatusOr<ChatRenderer> Create(const Tokenizer& tokenizer, ChatFormat format, ChatOptions options = {});

  // The ids of `messages` appended to a conversation: `first` starts it (Llama-3's
  // <|begin_of_text|>); `generation_prompt` opens the assistant's turn. INVALID_ARGUMENT for no
  // messages, an unknown role or content that is not UTF-8. With `message_ends`, where each
  // message's tokens end (the first one's begin at 0; the generation prompt follows the last).
  absl::StatusOr<std::vector<int32_t>> Render(absl::Span<const ChatMessage> messages, bool first,
                                              bool generation_prompt,
                                              std::vector<size_t>* message_ends = nullptr) const;

  // The ids that close an assistant turn whose content was generated: e.g. <|im_end|> "\n".
  std::vector<int32_t> AssistantEnd() const;
  // The tokens at which generation of an assistant turn stops: the turn's end first, then the
  // end-of-text tokens the tokenizer has (<|endoftext|>, <|end_of_text|>, <|eom_id|>).
  std::vector<int32_t> StopIds() const;

  ChatFormat format() const { return format_; }

 private:
  ChatRenderer(const Tokenizer& tokenizer, ChatFormat format, ChatOptions options)
      : tokenizer_(&tokenizer), format_(format), options_(options) {}
  absl::Status AppendText(std::string_view text, std::vector<int32_t>* ids) const;
  absl::Status AppendMessage(const ChatMessage& m, std::vector<int32_t>* ids) const;
  absl::Status AppendGenerationPrompt(std::vector<int32_t>* ids) const;

  const Tokenizer* tokenizer_;
  ChatFormat format_;
  ChatOptions options_;
  // The format's special tokens: Qwen3 <|im_start|>, <|im_end|>; Llama-3 <|begin_of_text|>,
  // <|start_header_id|>, <|end_header_id|>, <|eot_id|>.
  std::vector<int32_t> special_;
  std::vector<int32_t> extra_stops_;
};

// Stop strings on streamed text: holds back text that may be the start of a stop string, and
// reports the first complete one (matched across token boundaries). The stop string and what
// follows it are never returned.
class StopStringMatcher {
 public:
  explicit StopStringMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}
  struct Result {
    std::string text;      // safe to emit
    bool stopped = false;  // a stop string completed; `text` ends where it began
  };
  // Feed a piece of whole UTF-8 characters.
  Result Add(std::string_view piece);
  // The text held back when generation ends without a stop string.
  std::string Finish();

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace adaptd::engine

#endif  // ADAPTD_ENGINE_CHAT_H_
