# Unit tests of the CPU reference (bqjit::ref); included from tests/CMakeLists.txt.
if(NOT TARGET GTest::gtest_main)
  find_package(GTest REQUIRED)
endif()
include(GoogleTest)
add_executable(test_reference ${CMAKE_CURRENT_LIST_DIR}/test_reference.cpp)
target_link_libraries(test_reference PRIVATE bqjit_reference GTest::gtest_main)
gtest_discover_tests(test_reference)
