# LibTorch from the project venv's PyPI torch wheel (scripts/setup.sh installs it).
#
# Defines the imported target adaptd::torch from the wheel's libraries directly (torch_cpu, c10;
# with ADAPTD_CUDA=ON also torch_cuda, c10_cuda): find_package(Torch) on the CUDA wheel runs CUDA
# toolkit checks that fail or slow down on machines without a GPU, and the engine needs no
# toolkit.
# Override the wheel with -DADAPTD_TORCH_DIR=<site-packages>/torch (LibTorch 2.9 or later: Debian's
# libtorch-dev 1.13 is too old for the engine; README).

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
find_library(ADAPTD_TORCH_CPU_LIB torch_cpu PATHS "${ADAPTD_TORCH_DIR}/lib" NO_DEFAULT_PATH REQUIRED)
find_library(ADAPTD_C10_LIB c10 PATHS "${ADAPTD_TORCH_DIR}/lib" NO_DEFAULT_PATH REQUIRED)
target_include_directories(adaptd::torch SYSTEM INTERFACE
  "${ADAPTD_TORCH_DIR}/include" "${ADAPTD_TORCH_DIR}/include/torch/csrc/api/include")
target_link_libraries(adaptd::torch INTERFACE "${ADAPTD_TORCH_CPU_LIB}" "${ADAPTD_C10_LIB}")
# at::parallel_for is a header template whose OpenMP pragma runs only in code compiled with
# -fopenmp (without it, the loop runs on the calling thread alone). The engine's own parallel
# loops are compiled so (engine/CMakeLists.txt) and linked to the wheel's libgomp, the runtime
# LibTorch's threads already use: one OpenMP runtime in the process, one pool of threads.
find_library(ADAPTD_TORCH_GOMP_LIB NAMES libgomp.so.1 gomp PATHS "${ADAPTD_TORCH_DIR}/lib" NO_DEFAULT_PATH)
# The wheels are built with the C++11 ABI, like Debian's gRPC, protobuf and Abseil.
target_compile_definitions(adaptd::torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
if(ADAPTD_CUDA)
  # The engine calls LibTorch's CUDA backend only through ATen, so it needs the wheel's CUDA
  # libraries but no CUDA toolkit: such a build can be made on a machine without a GPU and run
  # on one with the same torch wheel (scripts/gpu/). torch_cuda registers the CUDA kernels when
  # it is loaded, so it is linked even though no symbol of it is referenced. The libraries after it
  # are linked as needed (CMake drops a repeated --push-state/--pop-state pair from the line, so
  # the state is not restored): a CUDA build's binaries then need only the Debian libraries they
  # use, which is what scripts/gpu/ carries.
  find_library(ADAPTD_TORCH_CUDA_LIB torch_cuda PATHS "${ADAPTD_TORCH_DIR}/lib" NO_DEFAULT_PATH REQUIRED)
  find_library(ADAPTD_C10_CUDA_LIB c10_cuda PATHS "${ADAPTD_TORCH_DIR}/lib" NO_DEFAULT_PATH REQUIRED)
  target_link_libraries(adaptd::torch INTERFACE
    "-Wl,--no-as-needed" "${ADAPTD_TORCH_CUDA_LIB}" "${ADAPTD_C10_CUDA_LIB}" "-Wl,--as-needed")
endif()
# Binaries find the wheel's libraries at run time without LD_LIBRARY_PATH.
set(CMAKE_BUILD_RPATH "${ADAPTD_TORCH_DIR}/lib")
message(STATUS "LibTorch: ${ADAPTD_TORCH_DIR} (CUDA ${ADAPTD_CUDA})")
