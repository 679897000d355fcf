# Writes OUTPUT, a C++ file that holds the bytes of each file of INPUTS (paths
# joined by "|") as an array, with the files' names (without directory) and
# sizes in tables of the same order.
string(REPLACE "|" ";" INPUTS "${INPUTS}")
set(arrays "")
set(names "")
set(datas "")
set(sizes "")
set(index 0)
foreach(input IN LISTS INPUTS)
  file(READ "${input}" hex HEX)
  string(LENGTH "${hex}" hexLength)
  math(EXPR size "${hexLength} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
  get_filename_component(name "${input}" NAME)
  string(APPEND arrays "const unsigned char kFile${index}[] = {\n${bytes}0x00};\n")
  string(APPEND names "\"${name}\", ")
  string(APPEND datas "kFile${index}, ")
  string(APPEND sizes "${size}, ")
  math(EXPR index "${index} + 1")
endforeach()
file(WRITE "${OUTPUT}.tmp"
     "// Generated from the kernel template's files; do not edit.\n#include <cstddef>\n"
     "namespace bqjit::detail {\nnamespace {\n${arrays}} // namespace\n"
     "extern const char* const kTemplateNames[] = {${names}};\n"
     "extern const unsigned char* const kTemplateData[] = {${datas}};\n"
     "extern const size_t kTemplateSizes[] = {${sizes}};\n"
     "extern const size_t kTemplateCount = ${index};\n} // namespace bqjit::detail\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
