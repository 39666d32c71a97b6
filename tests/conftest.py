import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.fixtures importable as "tests.fixtures.user_models"
os.environ.setdefault("OMP_NUM_THREADS", "1")
