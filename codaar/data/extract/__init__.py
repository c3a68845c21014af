"""``python -m codaar.data extract``: from a folder of videos (and captions, labels) to a data set.

Modules, one idea each: `inputs` (which files, their clip ids and fingerprints), `media` (PyAV decoding, the
segment/window policy, the decode workers), `logmel` (VGGish's input examples), `vggish` and
`vgg19` (the feature models, with `vgg_stack`), `weights` (local, published or random weights),
`features` (the models of one run), `captions` (per-clip text and how it is written) and
`annotations` (labels, splits), `workdir` (the streaming, resumable writer), `run` (the
extraction), `cli` (its command line). Importing this package imports neither PyAV nor torch.
"""


def __getattr__(name):
    # The extraction pulls in torch; `import codaar.data.extract` alone stays light.
    if name in ("extract", "ExtractSettings", "TooManyBadFiles"):
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'codaar.data.extract' has no attribute {name!r}")


__all__ = ["extract", "ExtractSettings", "TooManyBadFiles"]
