/* A C program built with nothing but `pkg-config --cflags --libs bqjit`
 * (scripts/test.sh, stage install): checks that bqjit_version() is the
 * version given as its argument (the VERSION file), then compiles a spec
 * through the C API into the cache directory given as its second argument
 * (NVRTC, no GPU needed) and prints the kernel's key. */
#include <stdio.h>
#include <string.h>

#include <bqjit/bqjit.h>

int main(int argc, char** argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s VERSION CACHE_DIR\n", argv[0]);
    return 2;
  }
  const char* version = bqjit_version();
  if (version == NULL || strcmp(version, argv[1]) != 0) {
    fprintf(stderr, "pkgconfig_check: bqjit_version() is '%s', expected '%s'\n",
            version ? version : "(null)", argv[1]);
    return 1;
  }
  bqjit_service service = NULL;
  if (bqjit_service_create(argv[2], &service) != BQJIT_OK) {
    fprintf(stderr, "pkgconfig_check: %s\n", bqjit_last_error());
    return 1;
  }
  static char meta[1 << 20];
  size_t needed = 0;
  bqjit_status status =
      bqjit_compile(service, "{\"hidden\": 2048, \"group_size\": 128, \"arch\": \"sm_90\"}", meta,
                    sizeof meta, &needed);
  bqjit_service_destroy(service);
  if (status != BQJIT_OK) {
    fprintf(stderr, "pkgconfig_check: bqjit_compile: %s\n", bqjit_last_error());
    return 1;
  }
  const char* key = strstr(meta, "\"key\"");
  if (key == NULL) {
    fprintf(stderr, "pkgconfig_check: the metadata has no key: %.200s\n", meta);
    return 1;
  }
  printf("pkgconfig_check: bqjit %s compiled H=2048 G=128 for sm_90: %.46s\n", version, key);
  return 0;
}
