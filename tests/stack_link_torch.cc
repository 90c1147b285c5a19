// The LibTorch half of stack_link_test, in its own translation unit: the wheel's include tree
// carries an older protobuf's headers, so no file may include LibTorch and protobuf together.
// The engine follows the same rule (LibTorch stays behind engine/'s own API).
#include <ATen/ATen.h>

float StackLinkTorchProbe() {
  at::Tensor a = at::arange(6, at::kFloat).reshape({2, 3});  // [2, 3]
  at::Tensor p = at::matmul(a, a.t());                        // [2, 2]
  return p[0][0].item<float>() + p[1][1].item<float>();      // 5 + 50
}
