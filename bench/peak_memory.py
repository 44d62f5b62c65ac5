"""Peak memory of a block of benchmark code, shared by the bench scripts (run as `python bench/NAME.py`)."""

import threading
import time

import psutil
import torch


class PeakMemory:
    """Resident memory sampled every `interval` s while the block runs, plus the CUDA allocator's peak.
    After the block: `rss_mib` (peak above the start), `peak_rss_mib` (process peak), `cuda_mib` (None without
    CUDA) and `mib` (the larger of the RSS rise and the CUDA peak)."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval

    def __enter__(self):
        self.proc, self.running = psutil.Process(), True
        self.start = self.peak = self.proc.memory_info().rss
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.rss_mib = (self.peak - self.start) / 2**20
        self.peak_rss_mib = self.peak / 2**20
        self.cuda_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
        self.mib = max(self.rss_mib, self.cuda_mib or 0.0)
