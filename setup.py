import re

from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()
with open("plsc/__init__.py", encoding="utf-8") as f:  # one version: plsc.__version__ (plsc --version prints it)
    version = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M).group(1)

setup(
    name="plsc",
    version=version,
    description="Large-scale face recognition training on PaddlePaddle: sharded PartialFC, margin heads, "
                "RecordIO data, verification/IJB evaluation, ONNX export",
    long_description=long_description,
    long_description_content_type="text/markdown",
    packages=find_packages(include=["plsc", "plsc.*"]),
    package_data={"plsc.deploy": ["weights/*.pt", "weights/*.md"]},  # MTCNN weights (MIT, see their README)
    python_requires=">=3.9",
    install_requires=[
        "numpy",
        "opencv-python-headless>=4.10",  # cv2.IMREAD_COLOR_RGB
        "pyyaml",
        "visualdl",
        "onnx",
        "paddle2onnx",
        "onnxruntime",
        "matplotlib",
        "faiss-cpu",  # plsc-search's gallery index
    ],
    extras_require={
        "cpu": ["paddlepaddle>=3.0"],
        "gpu": ["paddlepaddle-gpu>=3.0"],
        "test": ["pytest", "hypothesis"],
    },
    entry_points={
        "console_scripts": [
            "plsc=plsc.cli.main:main",
            "plsc-train=plsc.cli.train:train_main",
            "plsc-eval=plsc.cli.train:eval_main",
            "plsc-export=plsc.cli.train:export_main",
            "plsc-ijb=plsc.cli.ijb:ijb_main",
            "plsc-import=plsc.cli.interop:import_main",
            "plsc-pack-rec=plsc.cli.data:pack_rec_main",
            "plsc-unpack-rec=plsc.cli.data:unpack_rec_main",
            "plsc-inspect-rec=plsc.cli.data:inspect_rec_main",
            "plsc-bin-convert=plsc.cli.data:bin_convert_main",
            "plsc-fc-shards=plsc.cli.data:fc_shards_main",
            "plsc-embed=plsc.cli.deploy:embed_main",
            "plsc-verify=plsc.cli.deploy:verify_main",
            "plsc-calibrate=plsc.cli.deploy:calibrate_main",
            "plsc-search=plsc.cli.search:search_main",
            "plsc-demo=plsc.cli.demo:demo_main",
        ]
    },
)
