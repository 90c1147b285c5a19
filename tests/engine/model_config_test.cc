// ParseModelConfig: both HF schemas, TTT defaults, and specific errors for bad configs.
#include "adaptd/engine/model_config.h"

#include <gtest/gtest.h>

#include <string>

namespace adaptd::engine {
namespace {

std::string Qwen3(const std::string& extra = "") {
  return R"({"architectures":["Qwen3ForCausalLM"],"vocab_size":100,"hidden_size":64,
    "intermediate_size":128,"num_hidden_layers":13,"num_attention_heads":4,
    "num_key_value_heads":2,"head_dim":16,"rope_theta":1000000.0,"torch_dtype":"bfloat16")" +
         extra + "}";
}

TEST(ModelConfigTest, ParsesQwen3WithOfficialTttDefaults) {
  auto c = ParseModelConfig(Qwen3(R"(,"ttt_mode":true)"));
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kQwen3);
  EXPECT_TRUE(c->qk_norm);
  EXPECT_EQ(c->dtype, DType::kBF16);
  EXPECT_EQ(c->rope.theta, 1e6);
  EXPECT_TRUE(c->ttt.enabled);
  EXPECT_EQ(c->ttt.layers, (std::vector<int>{0, 6, 12}));  // 18, 24, 30 do not exist
  EXPECT_EQ(c->ttt.chunk, 8192);
  EXPECT_DOUBLE_EQ(c->ttt.lr, 0.3);
  EXPECT_TRUE(c->ttt.proj);
  EXPECT_EQ(c->ttt.target, TttConfig::Target::kHiddenStates);
}

TEST(ModelConfigTest, TttOffByDefaultAndFieldsRead) {
  auto off = ParseModelConfig(Qwen3());
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->ttt.enabled);
  EXPECT_TRUE(off->ttt.layers.empty());
  auto on = ParseModelConfig(Qwen3(R"(,"ttt_mode":true,"ttt_layers":[12,3,99],"ttt_chunk":64,
      "ttt_lr":3,"ttt_proj":false,"ttt_target":"input_embed")"));
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_EQ(on->ttt.layers, (std::vector<int>{3, 12}));
  EXPECT_EQ(on->ttt.chunk, 64);
  EXPECT_DOUBLE_EQ(on->ttt.lr, 3.0);
  EXPECT_FALSE(on->ttt.proj);
  EXPECT_EQ(on->ttt.target, TttConfig::Target::kInputEmbed);
}

TEST(ModelConfigTest, LlamaWithLlama3RopeInBothSchemas) {
  const std::string base = R"({"architectures":["LlamaForCausalLM"],"vocab_size":100,"hidden_size":64,
      "intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"tie_word_embeddings":true,)";
  auto old_schema = ParseModelConfig(base + R"("rope_theta":500000.0,"rope_scaling":{"rope_type":"llama3",
      "factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}})");
  auto new_schema = ParseModelConfig(base + R"("rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,
      "factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}})");
  for (const auto* c : {&old_schema, &new_schema}) {
    ASSERT_TRUE(c->ok()) << c->status();
    EXPECT_EQ((*c)->architecture, Architecture::kLlama);
    EXPECT_FALSE((*c)->qk_norm);
    EXPECT_TRUE((*c)->tie_word_embeddings);
    EXPECT_EQ((*c)->head_dim, 16);
    EXPECT_EQ((*c)->num_kv_heads, 4);
    EXPECT_EQ((*c)->rope.type, RopeConfig::Type::kLlama3);
    EXPECT_EQ((*c)->rope.theta, 500000.0);
    EXPECT_EQ((*c)->rope.factor, 8.0);
  }
}

TEST(ModelConfigTest, RejectsBadConfigsNamingTheField) {
  struct Case {
    std::string json;
    absl::StatusCode code;
    const char* needle;
  } cases[] = {
      {"{not json", absl::StatusCode::kInvalidArgument, "not valid JSON"},
      {R"({"architectures":["GPT2LMHeadModel"]})", absl::StatusCode::kUnimplemented, "GPT2LMHeadModel"},
      {R"({"architectures":["Qwen3ForCausalLM"],"vocab_size":100})", absl::StatusCode::kInvalidArgument, "hidden_size"},
      {Qwen3(R"(,"rope_scaling":{"rope_type":"yarn","factor":4.0})"), absl::StatusCode::kUnimplemented, "yarn"},
      {Qwen3(R"(,"ttt_target":"logits")"), absl::StatusCode::kInvalidArgument, "ttt_target"},
      {Qwen3(R"(,"ttt_chunk":0)"), absl::StatusCode::kInvalidArgument, "ttt_chunk"},
      {Qwen3(R"(,"ttt_layers":"all")"), absl::StatusCode::kInvalidArgument, "ttt_layers"},
      {Qwen3(R"(,"hidden_act":"gelu")"), absl::StatusCode::kUnimplemented, "gelu"},
      {Qwen3(R"(,"attention_bias":true)"), absl::StatusCode::kUnimplemented, "attention_bias"},
      {R"({"architectures":["Qwen3ForCausalLM"],"vocab_size":100,"hidden_size":64,"intermediate_size":128,
          "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":3})",
       absl::StatusCode::kInvalidArgument, "num_key_value_heads"},
      {Qwen3(R"(,"rms_norm_eps":-1)"), absl::StatusCode::kInvalidArgument, "rms_norm_eps"},
  };
  for (const auto& c : cases) {
    auto parsed = ParseModelConfig(c.json);
    ASSERT_FALSE(parsed.ok()) << c.json;
    EXPECT_EQ(parsed.status().code(), c.code) << parsed.status();
    EXPECT_NE(parsed.status().message().find(c.needle), std::string::npos) << parsed.status();
  }
}

}  // namespace
}  // namespace adaptd::engine
