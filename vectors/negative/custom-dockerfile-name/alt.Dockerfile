FROM scratch
RUN echo
BOGUS x
