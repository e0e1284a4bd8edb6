"""The NeRF auto-decoder, notebooks 01-02: the triplane code x_i and the code bank
(`triplane`), the decoder psi (`decoder`), volume rendering (`render`), empty-space
skipping (`occupancy`), and the rendering loss eq. (1) with the one code step every loop
uses (`autodecoder`)."""
