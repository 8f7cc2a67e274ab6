// The only place Perennial includes libuv. Swift code above this target sees
// libuv's C API through the CLibUV module; keep its types inside the server's
// loop and connection files.
#include <uv.h>
