// ASSIGN_OR_RETURN for absl::StatusOr, private to engine/. It expands to several statements:
// brace it under an if.
#ifndef ADAPTD_ENGINE_SRC_STATUS_MACROS_H_
#define ADAPTD_ENGINE_SRC_STATUS_MACROS_H_

#include <utility>

#define ADAPTD_CONCAT_INNER_(a, b) a##b
#define ADAPTD_CONCAT_(a, b) ADAPTD_CONCAT_INNER_(a, b)
#define ADAPTD_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                  \
  if (!tmp.ok()) return tmp.status();                 \
  lhs = *std::move(tmp)

// lhs = value of the StatusOr expr, or return its error from the enclosing function.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ADAPTD_ASSIGN_OR_RETURN_IMPL_(ADAPTD_CONCAT_(status_or_, __LINE__), lhs, expr)

#define RETURN_IF_ERROR(expr)               \
  do {                                      \
    if (auto _s = (expr); !_s.ok()) return _s; \
  } while (0)

#endif  // ADAPTD_ENGINE_SRC_STATUS_MACROS_H_
