"""BibTeX of the works the tasks follow, written once so every task cites them the same way."""

SONG_2025 = r"""@inproceedings{song2025position,
  title = {Position: Mechanistic Interpretability Should Prioritize Feature Consistency in {SAEs}},
  author = {Song, Xiangchen and Muhamed, Aashiq and Zheng, Yujia and Kong, Lingjing and Tang, Zeyu and Diab, Mona T. and Smith, Virginia and Zhang, Kun},
  year = {2025},
  eprint = {2505.20254},
  archivePrefix = {arXiv},
  url = {https://arxiv.org/abs/2505.20254}
}"""

PAULO_BELROSE_2025 = r"""@misc{paulo2025sparse,
  title = {Sparse Autoencoders Trained on the Same Data Learn Different Features},
  author = {Paulo, Gon{\c{c}}alo and Belrose, Nora},
  year = {2025},
  eprint = {2501.16615},
  archivePrefix = {arXiv},
  url = {https://arxiv.org/abs/2501.16615}
}"""

CHANIN_GARRIGA_ALONSO_2026 = r"""@article{chanin2026synthsaebench,
  title = {{SynthSAEBench}: Evaluating Sparse Autoencoders on Scalable Realistic Synthetic Data},
  author = {Chanin, David and Garriga-Alonso, Adri{\`a}},
  year = {2026},
  note = {Synthetic model organisms in SAELens, \texttt{sae\_lens.synthetic}}
}"""


LEASK_2025 = r"""@inproceedings{leask2025sparse,
  title = {Sparse Autoencoders Do Not Find Canonical Units of Analysis},
  author = {Leask, Patrick and Bussmann, Bart and Pearce, Michael and Bloom, Joseph and Tigges, Curt and Al Moubayed, Noura and Sharkey, Lee and Nanda, Neel},
  booktitle = {The Thirteenth International Conference on Learning Representations},
  year = {2025},
  eprint = {2502.04878},
  archivePrefix = {arXiv},
  url = {https://arxiv.org/abs/2502.04878}
}"""

KARVONEN_2025 = r"""@misc{karvonen2025saebench,
  title = {{SAEBench}: A Comprehensive Benchmark for Sparse Autoencoders in Language Model Interpretability},
  author = {Karvonen, Adam and Rager, Can and Lin, Johnny and Tigges, Curt and Bloom, Joseph and Chanin, David and Lau, Yeu-Tong and Farrell, Eoin and McDougall, Callum and Ayonrinde, Kola and Till, Demian and Wearden, Matthew and Conmy, Arthur and Marks, Samuel and Nanda, Neel},
  year = {2025},
  eprint = {2503.09532},
  archivePrefix = {arXiv},
  url = {https://arxiv.org/abs/2503.09532}
}"""


def join(*entries: str) -> str:
    """Several BibTeX entries as one citation block."""
    return "\n\n".join(entries)
