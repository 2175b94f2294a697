"""Running jobs: planning (probe × models × datasets), the driver (runner), the worker that executes one job
from plain data, loading models and datasets (sources, libraries), devices, and the executors that move jobs
to workers (inline, local processes, or a plugin's such as Ray)."""
