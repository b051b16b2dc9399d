
ds-1label