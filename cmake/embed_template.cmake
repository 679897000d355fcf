# Writes OUTPUT, a C++ file that holds INPUT's bytes as an array.
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" hexLength)
math(EXPR size "${hexLength} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}.tmp" "// Generated from ${INPUT}; do not edit.\n#include <cstddef>\nnamespace bqjit::detail {\nextern const unsigned char kTemplateBytes[] = {\n${bytes}0x00};\nextern const size_t kTemplateSize = ${size};\n} // namespace bqjit::detail\n")
file(RENAME "${OUTPUT}.tmp" "${OUTPUT}")
