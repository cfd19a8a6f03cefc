"""sei-tf: self-supervised super-resolution and deblurring with Scale-Equivariant Imaging."""

__version__ = "0.1.0"
