import os
import sys

# Must happen before paddle is imported anywhere in the test session.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from plsc.env import setup_threads  # noqa: E402

setup_threads()
