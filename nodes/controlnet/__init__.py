"""ControlNets: loading their files (:mod:`.load`), the CONTROL_NET handle and its fit to a MODEL (:mod:`.handle`),
and applying them to conditioning so the sampler adds their residuals to the UNet (:mod:`.apply`)."""
