#include "jit/cubin_info.hpp"

#include <cstdint>
#include <cstring>

#include "bqjit/error.hpp"

namespace bqjit {

namespace {

struct Section {
  uint32_t name, type;
  uint64_t offset, size;
  uint32_t link, info;
  uint64_t entrySize;
};

template <typename T> bool readAt(const std::vector<char>& b, uint64_t off, T& out) {
  if (off > b.size() || b.size() - off < sizeof(T))
    return false;
  std::memcpy(&out, b.data() + off, sizeof(T));
  return true;
}

llvm::Error malformed(const std::string& what) {
  return makeError(ErrorCode::Internal, "malformed cubin: " + what);
}

} // namespace

llvm::Expected<CubinKernelInfo> readCubinKernelInfo(const std::vector<char>& cubin,
                                                    const std::string& loweredName) {
  if (cubin.size() < 64 || std::memcmp(cubin.data(),
                                       "\x7f"
                                       "ELF\x02",
                                       5) != 0)
    return malformed("not a 64-bit ELF file");
  uint64_t shoff = 0;
  uint16_t shentsize = 0, shnum = 0, shstrndx = 0;
  if (!readAt(cubin, 0x28, shoff) || !readAt(cubin, 0x3A, shentsize) ||
      !readAt(cubin, 0x3C, shnum) || !readAt(cubin, 0x3E, shstrndx) || shentsize < 64 ||
      shstrndx >= shnum)
    return malformed("bad ELF header");
  std::vector<Section> sections(shnum);
  for (uint16_t i = 0; i < shnum; ++i) {
    const uint64_t base = shoff + uint64_t(i) * shentsize;
    Section& s = sections[i];
    if (!readAt(cubin, base, s.name) || !readAt(cubin, base + 4, s.type) ||
        !readAt(cubin, base + 0x18, s.offset) || !readAt(cubin, base + 0x20, s.size) ||
        !readAt(cubin, base + 0x28, s.link) || !readAt(cubin, base + 0x2C, s.info) ||
        !readAt(cubin, base + 0x38, s.entrySize))
      return malformed("section header " + std::to_string(i) + " out of bounds");
    if (s.type != 8 /*SHT_NOBITS*/ && (s.offset > cubin.size() || cubin.size() - s.offset < s.size))
      return malformed("section " + std::to_string(i) + " out of bounds");
  }
  // A SHT_NOBITS section occupies no bytes of the file (its offset and size
  // were not checked above): it reads as empty.
  auto stringAt = [&](const Section& table, uint32_t off) -> std::string {
    if (table.type == 8 /*SHT_NOBITS*/ || off >= table.size)
      return "";
    const char* p = cubin.data() + table.offset + off;
    return std::string(p, strnlen(p, table.size - off));
  };
  auto sectionName = [&](const Section& s) { return stringAt(sections[shstrndx], s.name); };

  // The kernel's symbol index.
  int64_t symbol = -1;
  for (const Section& s : sections) {
    if (s.type != 2 /*SHT_SYMTAB*/ || s.entrySize < 24 || s.link >= shnum)
      continue;
    for (uint64_t k = 0; k < s.size / s.entrySize; ++k) {
      uint32_t nameOff = 0;
      readAt(cubin, s.offset + k * s.entrySize, nameOff);
      if (stringAt(sections[s.link], nameOff) == loweredName)
        symbol = static_cast<int64_t>(k);
    }
  }
  if (symbol < 0)
    return malformed("no symbol '" + loweredName + "'");

  CubinKernelInfo info;
  for (const Section& s : sections) {
    const std::string name = sectionName(s);
    if (name == ".nv.shared." + loweredName)
      info.sharedBytes = static_cast<int>(s.size);
    if (name != ".nv.info" || s.type == 8 /*SHT_NOBITS*/)
      continue;
    // Records: u8 format, u8 attribute, u16 size or value; format 4 has a payload.
    for (uint64_t p = s.offset; p + 4 <= s.offset + s.size;) {
      const uint8_t format = static_cast<uint8_t>(cubin[p]);
      const uint8_t attribute = static_cast<uint8_t>(cubin[p + 1]);
      uint16_t size = 0;
      readAt(cubin, p + 2, size);
      if (format != 4) {
        p += 4;
        continue;
      }
      uint32_t sym = 0, value = 0;
      if (size >= 8 && readAt(cubin, p + 4, sym) && readAt(cubin, p + 8, value) &&
          sym == static_cast<uint64_t>(symbol)) {
        if (attribute == 0x2f) // EIATTR_REGCOUNT
          info.registers = static_cast<int>(value);
        else if (attribute == 0x11) // EIATTR_FRAME_SIZE
          info.frameBytes = static_cast<int>(value);
      }
      p += 4 + size;
    }
  }
  if (info.registers < 0)
    return malformed("no register count for '" + loweredName + "'");
  return info;
}

} // namespace bqjit
