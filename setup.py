from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="plsc",
    version="0.1.0",
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
            "plsc-train=plsc.cli:train_main",
            "plsc-eval=plsc.cli:eval_main",
            "plsc-export=plsc.cli:export_main",
            "plsc-demo=plsc.demo.run:main",
            "plsc-ijb=plsc.tools.ijb_eval:main",
            "plsc-pack-rec=plsc.tools.pack_rec:main",
            "plsc-unpack-rec=plsc.tools.unpack_rec:main",
            "plsc-inspect-rec=plsc.tools.inspect_rec:main",
            "plsc-bin-convert=plsc.tools.bin_convert:main",
            "plsc-fc-shards=plsc.tools.fc_shards:main",
            "plsc-import=plsc.tools.import_ckpt:main",
            "plsc-embed=plsc.deploy.cli:embed_main",
            "plsc-verify=plsc.deploy.cli:verify_main",
            "plsc-calibrate=plsc.deploy.cli:calibrate_main",
            "plsc-search=plsc.deploy.cli:search_main",
        ]
    },
)
