# adaptd_module(<name> SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
# A module library adaptd_<name> (alias adaptd::<name>) with public headers in
# <module>/include/adaptd/<name>/ and private sources in <module>/src/.
function(adaptd_module name)
  cmake_parse_arguments(M "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(adaptd_${name} STATIC ${M_SOURCES})
  add_library(adaptd::${name} ALIAS adaptd_${name})
  target_include_directories(adaptd_${name}
    PUBLIC "${CMAKE_CURRENT_SOURCE_DIR}/include"
    PRIVATE "${CMAKE_CURRENT_SOURCE_DIR}/src")
  target_link_libraries(adaptd_${name} PUBLIC ${M_PUBLIC_DEPS} PRIVATE ${M_PRIVATE_DEPS})
endfunction()
