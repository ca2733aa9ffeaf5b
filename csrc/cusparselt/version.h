// cuSPARSELt's version macros changed names between releases (0.8: CUSPARSELT_VER_MAJOR/...,
// plus CUSPARSELT_VERSION = major*1000 + minor*100 + patch). Read whichever this header has, so
// that a build against another wheel still compiles and reports its version.
#pragma once
#include <cusparseLt.h>

#if defined(CUSPARSELT_VER_MAJOR)
#define SP24_CSLT_MAJOR CUSPARSELT_VER_MAJOR
#define SP24_CSLT_MINOR CUSPARSELT_VER_MINOR
#define SP24_CSLT_PATCH CUSPARSELT_VER_PATCH
#elif defined(CUSPARSELT_VERSION_MAJOR)
#define SP24_CSLT_MAJOR CUSPARSELT_VERSION_MAJOR
#define SP24_CSLT_MINOR CUSPARSELT_VERSION_MINOR
#define SP24_CSLT_PATCH CUSPARSELT_VERSION_PATCH
#elif defined(CUSPARSELT_VERSION)
#define SP24_CSLT_MAJOR (CUSPARSELT_VERSION / 1000)
#define SP24_CSLT_MINOR ((CUSPARSELT_VERSION % 1000) / 100)
#define SP24_CSLT_PATCH (CUSPARSELT_VERSION % 100)
#else
#define SP24_CSLT_MAJOR (-1)
#define SP24_CSLT_MINOR 0
#define SP24_CSLT_PATCH 0
#endif
