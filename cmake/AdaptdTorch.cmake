# LibTorch from the project venv's PyPI torch wheel (scripts/setup.sh installs it).
#
# Defines the imported target adaptd::torch. CPU builds (the default, and CI) import the wheel's
# CPU libraries (torch_cpu, c10) directly: find_package(Torch) on the CUDA wheel runs CUDA
# toolkit checks that fail or slow down on machines without a GPU. With ADAPTD_CUDA=ON the
# wheel's own TorchConfig.cmake is used, which brings the CUDA libraries.
# Override the wheel with -DADAPTD_TORCH_DIR=<site-packages>/torch. Debian's CPU-only
# libtorch-dev 1.13 is a documented fallback only (README), not used by default.

if(NOT ADAPTD_TORCH_DIR)
  set(_venv_python "${PROJECT_SOURCE_DIR}/.venv/bin/python")
  if(NOT EXISTS "${_venv_python}")
    message(FATAL_ERROR "No .venv: run scripts/setup.sh first (or pass -DADAPTD_TORCH_DIR=...)")
  endif()
  execute_process(
    COMMAND "${_venv_python}" -c "import os, torch; print(os.path.dirname(torch.__file__))"
    OUTPUT_VARIABLE ADAPTD_TORCH_DIR OUTPUT_STRIP_TRAILING_WHITESPACE
    RESULT_VARIABLE _rc)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "The venv has no importable torch: run scripts/setup.sh")
  endif()
endif()
set(ADAPTD_TORCH_DIR "${ADAPTD_TORCH_DIR}" CACHE PATH "The torch package directory of the wheel")

add_library(adaptd::torch INTERFACE IMPORTED)
if(ADAPTD_CUDA)
  find_package(Torch REQUIRED PATHS "${ADAPTD_TORCH_DIR}/share/cmake/Torch" NO_DEFAULT_PATH)
  target_link_libraries(adaptd::torch INTERFACE ${TORCH_LIBRARIES})
  target_compile_definitions(adaptd::torch INTERFACE ADAPTD_HAVE_CUDA=1)
else()
  find_library(ADAPTD_TORCH_CPU_LIB torch_cpu PATHS "${ADAPTD_TORCH_DIR}/lib" NO_DEFAULT_PATH REQUIRED)
  find_library(ADAPTD_C10_LIB c10 PATHS "${ADAPTD_TORCH_DIR}/lib" NO_DEFAULT_PATH REQUIRED)
  target_include_directories(adaptd::torch SYSTEM INTERFACE
    "${ADAPTD_TORCH_DIR}/include" "${ADAPTD_TORCH_DIR}/include/torch/csrc/api/include")
  target_link_libraries(adaptd::torch INTERFACE "${ADAPTD_TORCH_CPU_LIB}" "${ADAPTD_C10_LIB}")
  # The wheels are built with the C++11 ABI, like Debian's gRPC, protobuf and Abseil.
  target_compile_definitions(adaptd::torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
endif()
# Binaries find the wheel's libraries at run time without LD_LIBRARY_PATH.
set(CMAKE_BUILD_RPATH "${ADAPTD_TORCH_DIR}/lib")
message(STATUS "LibTorch: ${ADAPTD_TORCH_DIR} (CUDA ${ADAPTD_CUDA})")
