"""Export a trained checkpoint as a FAISS index artifact: python export.py checkpoint=<ckpt or run dir> [index=ivf_pq] output_dir=<dir>.

The same as the installed ``twotower-export`` (see README).
"""
from twotower.cli import export_main

if __name__ == "__main__":
    export_main()
