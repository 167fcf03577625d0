"""Regenerate medxai's synthetic sample data into this folder: python sample_data/make_samples.py"""

from pathlib import Path

from medxai.samples import write_samples

if __name__ == "__main__":
    for name, path in write_samples(Path(__file__).resolve().parent).items():
        print(f"{name:18s} {path}")
