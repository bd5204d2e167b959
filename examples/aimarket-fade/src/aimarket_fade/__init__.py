"""An example third-party stage for aimarket: ``fade.apply`` fades generated audio in and out.

Importing this package does nothing; aimarket imports :mod:`aimarket_fade.stage` through the
``aimarket.stages`` entry point, which registers the actor. :mod:`aimarket_fade.audio` holds
the signal processing and has no aimarket import, so it can be used and tested on its own.
"""

__version__ = "0.1.0"
