"""The emulation lane's summary: compared cases, emulator counters, wall time (see test_emu_kernels.py)."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))

_T0 = time.time()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    mod = sys.modules.get("test_emu_kernels")
    if mod is None or not hasattr(mod, "CASES"):
        return
    import emu

    st = emu.stats()
    tr = terminalreporter
    tr.write_sep("=", "sp24 CUDA emulation lane")
    tr.write_line(f"cases compared bit for bit with the CPU kernels and sp24.reference: {mod.CASES['n']}")
    tr.write_line("emulator: " + ", ".join(f"{k} {v}" for k, v in st.items()))
    tr.write_line(f"sanitizers: ASan + UBSan (no recovery); a report aborts the run, so reaching this line "
                  f"means 0 reports. wall time {time.time() - _T0:.1f} s")
