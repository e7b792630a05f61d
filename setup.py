import glob

from setuptools import find_packages, setup


setup(
    name="ltx2-diffusers",
    version="0.1.0.dev0",
    description="Lightricks LTX-2 / LTX-2.3 audio-video diffusion for Hugging Face diffusers, centred on audio-to-video.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    package_dir={"": "src"},
    packages=find_packages("src"),
    include_package_data=True,
    package_data={"ltx2_diffusers.pipelines": ["prompts/*.txt"]},
    data_files=[("share/ltx2-diffusers/model_cards", sorted(glob.glob("model_cards/*.md")))],
    python_requires=">=3.10",
    install_requires=[
        "diffusers>=0.42.1,<0.43",
        "transformers>=5",
        "accelerate",
        "peft",
        "safetensors",
        "huggingface_hub",
        "av",
        "librosa",
        "soundfile",
        "numpy",
        "tqdm",
        "matplotlib",
        "torch>=2.7",
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "ltx-core==1.0.0", "ltx-pipelines==1.0.0"],
        "dev": ["ruff"],
    },
    entry_points={
        "console_scripts": [
            "ltx2-a2v=ltx2_diffusers.a2vid:main",
            "ltx2-av=ltx2_diffusers.av_cli:main",
            "ltx2-sync-report=ltx2_diffusers.sync:main",
        ]
    },
)
