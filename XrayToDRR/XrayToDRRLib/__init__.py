"""XrayToDRR engine: I/O, canonical poses, preparation, DRR rendering, simulated X-rays, jobs and CLI.

Nothing here imports qt, ctk or slicer, except `mrml.py` (Qt-free MRML glue: slicer and vtk only).
"""

__version__ = "0.1.0"
