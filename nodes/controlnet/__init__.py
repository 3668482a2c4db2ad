"""ControlNets and T2I-Adapters: loading their files (:mod:`.load`; T2I-Adapter layouts: :mod:`.t2i_load`), the
CONTROL_NET handle and a ControlNet's fit to a MODEL (:mod:`.handle`), a T2I-Adapter's fit, hint and features
(:mod:`.t2i_apply`), and applying them to conditioning so the sampler adds their residuals to the UNet
(:mod:`.apply`)."""
