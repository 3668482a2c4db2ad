"""GLIGEN (grounded generation): reading its files (:mod:`.load`), the GLIGEN handle and its fit to a MODEL
(:mod:`.handle`), and boxes on conditioning that ground the UNet while that conditioning is sampled (:mod:`.apply`)."""
