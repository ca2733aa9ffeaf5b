/* Test controls of the cuSPARSELt contract test double (csrc/emu/cusparselt/cusparselt_double.cpp).
 * A TEST TOOL: plain C, callable from C++ tests and from Python through ctypes. Thread-safe (one
 * process-wide mutex guards the double's state). Returned strings stay valid on the calling thread
 * until its next call of the same function. */
#if !defined(SP24_EMU_CUSPARSELT_CONTROL_H_)
#define SP24_EMU_CUSPARSELT_CONTROL_H_

#if defined(__cplusplus)
extern "C" {
#endif

/* Forget all state: every handle, descriptor, selection and plan (later use of one is reported as
 * "not initialised"), the violation count and text, the call log, armed failures; the GPU goes back
 * to the default sm_90. */
void sp24dbl_reset(void);

/* The GPU the double pretends to be, as major*10 + minor (80, 86, 87, 89, 90, 100, 103, 110, 120,
 * 121, ...; default 90). A handle takes the value current at its cusparseLtInit. */
void sp24dbl_set_arch(int sm);

/* Handles, matrix descriptors, algorithm selections and plans initialised and not yet destroyed
 * (matmul descriptors have no destroy function in cuSPARSELt and are not counted). */
int sp24dbl_live_objects(void);

/* "" if no rule was broken since the last reset; else the latest one:
 * "<function>: <rule broken, with the values> [cuSPARSELt docs: <page/section>]". */
const char* sp24dbl_last_violation(void);

/* Number of broken rules since the last reset. */
int sp24dbl_violations(void);

/* One line per cuSPARSELt API call since the last reset: "<function>(<key arguments>) -> <status>". */
const char* sp24dbl_call_log(void);

/* Fault injection: the next call of `function` (e.g. "cusparseLtMatmul") returns `status` without
 * doing anything (no rule checked, no state changed). Each function has one slot; status 0 disarms
 * that function; function "" (or NULL) disarms all. */
void sp24dbl_fail_next(const char* function, int status);

#if defined(__cplusplus)
}
#endif

#endif /* SP24_EMU_CUSPARSELT_CONTROL_H_ */
