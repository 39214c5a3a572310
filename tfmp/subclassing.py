"""Same-name subclasses of Keras layer classes, swapped onto layers in place.

    swaps = SubclassSwaps(lambda cls: MyMixin if issubclass(cls, keras.layers.Dense) else None)
    layer.__class__ = swaps.subclass_of(type(layer))   # None: no mixin for that class
    layer.__class__ = swaps.original[type(layer)]      # and back

keras-hub builds its Dense, EinsumDense and attention layers inside its backbones, with no
hook to choose their classes. `tfmp.float16_cpu` and `tfmp.fused_matmul` change how such
layers compute by giving each a subclass of its own class with a mixin in front: no new
state, the original's `get_config`, and the original's name and module, so anything that
prints or serializes the class name sees the original and saved files do not change.
"""


class SubclassSwaps:
    """The swapped subclass of each class met, and the way back.

    Args:
        mixin_for: callable(cls) -> the mixin class to put in front of `cls`, or None
            where `cls` is not to be swapped.
    """

    def __init__(self, mixin_for):
        self._mixin_for = mixin_for
        self.subclass = {}  # original class -> swapped subclass
        self.original = {}  # swapped subclass -> original class

    def subclass_of(self, cls):
        """The swapped subclass of `cls` (made once), `cls` if it is one, or None."""
        if cls in self.original:
            return cls
        if cls not in self.subclass:
            mixin = self._mixin_for(cls)
            if mixin is None:
                return None
            sub = type(cls.__name__, (mixin, cls), {"__module__": cls.__module__,
                                                    "__qualname__": cls.__qualname__})
            self.subclass[cls], self.original[sub] = sub, cls
        return self.subclass[cls]
