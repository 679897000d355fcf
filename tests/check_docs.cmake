# The README's C++ example is the consumer project that CI builds against the
# installed package (scripts/test.sh, stage install), and the repository is
# self-contained. Run as a test: cmake -DSOURCE_DIR=<checkout> -P check_docs.cmake
#   1. README's cmake block after the marker <!-- examples/consumer/CMakeLists.txt -->
#      is that file, byte for byte;
#   2. README's cpp block after <!-- examples/consumer/consumer.cpp (excerpt) -->
#      is the code between "// [readme-begin]" and "// [readme-end]" there,
#      less the two spaces of indentation of main's body;
#   3. no file of the repository points outside it (to a shared/ folder next
#      to the checkout) and the contract it cites exists.
if(NOT SOURCE_DIR)
  message(FATAL_ERROR "usage: cmake -DSOURCE_DIR=<checkout> -P check_docs.cmake")
endif()
set(failures 0)
macro(fail text)
  message(SEND_ERROR "${text}")
  math(EXPR failures "${failures} + 1")
endmacro()

file(READ "${SOURCE_DIR}/README.md" readme)

# block_after(MARKER FENCE OUT): the text of the first ```FENCE block after MARKER.
function(block_after marker fence out)
  string(FIND "${readme}" "${marker}" at)
  if(at EQUAL -1)
    set(${out} "<marker '${marker}' not found in README.md>" PARENT_SCOPE)
    return()
  endif()
  string(SUBSTRING "${readme}" ${at} -1 rest)
  set(open "```${fence}\n")
  string(FIND "${rest}" "${open}" begin)
  if(begin EQUAL -1)
    set(${out} "<no ```${fence} block after '${marker}'>" PARENT_SCOPE)
    return()
  endif()
  string(LENGTH "${open}" skip)
  math(EXPR begin "${begin} + ${skip}")
  string(SUBSTRING "${rest}" ${begin} -1 rest)
  string(FIND "${rest}" "```\n" end)
  string(SUBSTRING "${rest}" 0 ${end} block)
  set(${out} "${block}" PARENT_SCOPE)
endfunction()

# 1. The consumer's CMakeLists.txt.
file(READ "${SOURCE_DIR}/examples/consumer/CMakeLists.txt" consumer_cmake)
block_after("<!-- examples/consumer/CMakeLists.txt -->" "cmake" shown)
if(NOT shown STREQUAL consumer_cmake)
  fail("README.md's CMake example differs from examples/consumer/CMakeLists.txt:\n"
       "--- README.md\n${shown}--- examples/consumer/CMakeLists.txt\n${consumer_cmake}")
endif()

# 2. The consumer's code, between its markers.
file(READ "${SOURCE_DIR}/examples/consumer/consumer.cpp" consumer_cpp)
set(begin_marker "  // [readme-begin]\n")
string(FIND "${consumer_cpp}" "${begin_marker}" begin)
string(FIND "${consumer_cpp}" "  // [readme-end]\n" end)
if(begin EQUAL -1 OR end EQUAL -1 OR end LESS begin)
  fail("examples/consumer/consumer.cpp lacks the lines '  // [readme-begin]' and '  // [readme-end]'")
else()
  string(LENGTH "${begin_marker}" skip)
  math(EXPR begin "${begin} + ${skip}")
  math(EXPR length "${end} - ${begin}")
  string(SUBSTRING "${consumer_cpp}" ${begin} ${length} excerpt)
  string(REGEX REPLACE "^  " "" excerpt "${excerpt}")
  string(REGEX REPLACE "\n  " "\n" excerpt "${excerpt}")
  block_after("<!-- examples/consumer/consumer.cpp (excerpt) -->" "cpp" shown)
  if(NOT shown STREQUAL excerpt)
    fail("README.md's C++ example differs from examples/consumer/consumer.cpp between its "
         "readme markers:\n--- README.md\n${shown}--- consumer.cpp\n${excerpt}")
  endif()
endif()

# 3. Nothing points outside the repository. The needle is built in two parts
# so that this file does not match itself.
set(outside "shared/")
set(outside "../${outside}")
set(named "SPEC")
set(named "${named}\\.md")
find_program(GIT git)
set(files "")
if(GIT AND EXISTS "${SOURCE_DIR}/.git")
  execute_process(COMMAND "${GIT}" -C "${SOURCE_DIR}" ls-files -co --exclude-standard
                  OUTPUT_VARIABLE listed RESULT_VARIABLE rc)
  if(rc EQUAL 0)
    string(REPLACE "\n" ";" files "${listed}")
  endif()
endif()
if(NOT files)
  file(GLOB_RECURSE files RELATIVE "${SOURCE_DIR}" "${SOURCE_DIR}/*")
  list(FILTER files EXCLUDE REGEX "^(build[^/]*|devpack|\\.git)/")
endif()
set(checked 0)
foreach(file IN LISTS files)
  if(file STREQUAL "" OR NOT EXISTS "${SOURCE_DIR}/${file}" OR IS_DIRECTORY "${SOURCE_DIR}/${file}")
    continue()
  endif()
  file(STRINGS "${SOURCE_DIR}/${file}" hits REGEX "(${outside}|(^|[^A-Za-z_/])${named})")
  math(EXPR checked "${checked} + 1")
  if(hits)
    fail("${file} points outside the repository: ${hits}")
  endif()
endforeach()
if(checked LESS 50)
  fail("only ${checked} files of ${SOURCE_DIR} were checked")
endif()
if(NOT EXISTS "${SOURCE_DIR}/docs/contract.md")
  fail("docs/contract.md, the contract every part cites, is missing")
endif()

if(failures GREATER 0)
  message(FATAL_ERROR "${failures} check(s) failed")
endif()
message(STATUS "README's example is examples/consumer; ${checked} files point nowhere outside")
