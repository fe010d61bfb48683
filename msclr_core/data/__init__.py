"""Datasets: the on-disk format (dataset.py), shared preprocessing (preprocess.py) and
importers (ntu.py for raw NTU RGB+D .skeleton files, ...).

Import submodules directly (`from msclr_core.data.dataset import load_dataset`); this
package imports nothing eagerly so that `import msclr_core.data.x` stays cheap.
"""
