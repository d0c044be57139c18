/* One record per weight format (fastlinear.h's fl_dtype): the facts every other place
 * reads instead of restating them (packing, the driver, each ISA's tiles). Python keeps
 * its own record beside it (fastlinear/_formats.py: numpy types, scale shapes). A static
 * table, so that a kernel instantiated for one format folds these into constants. */
#ifndef FL_FORMATS_H
#define FL_FORMATS_H

#include "fastlinear.h"

typedef enum {
    FL_SCALE_NONE,   /* the stored value is the weight */
    FL_SCALE_ROW,    /* one float32 scale per output row, applied to the row's sum (int8) */
    FL_SCALE_GROUP   /* one float32 scale per group of k values, applied to each weight
                        (int4; q * s is exact, fastlinear.h) */
} fl_scale_kind;

typedef struct {
    unsigned bits;         /* per stored weight */
    fl_scale_kind scale;
    int widens;            /* compressed: widened exactly to float32 before the multiply */
    fl_dtype values;       /* the type of x, y and the bias: FL_F32 or FL_F64 */
    int quantizes_x;       /* x quantized to int8 per row, integer sums (fastlinear.h) */
} fl_format;

static const fl_format fl_formats[FL_NDTYPES] __attribute__((unused)) = {
    [FL_F32] = {32, FL_SCALE_NONE, 0, FL_F32},
    [FL_F64] = {64, FL_SCALE_NONE, 0, FL_F64},
    [FL_BF16] = {16, FL_SCALE_NONE, 1, FL_F32},
    [FL_F16] = {16, FL_SCALE_NONE, 1, FL_F32},
    [FL_I8] = {8, FL_SCALE_ROW, 1, FL_F32},
    [FL_I4] = {4, FL_SCALE_GROUP, 1, FL_F32},
    [FL_I8Q] = {8, FL_SCALE_ROW, 0, FL_F32, 1},
    [FL_I4Q] = {4, FL_SCALE_GROUP, 0, FL_F32, 1},
};

/* Bytes of one x, y or bias value for weights of this format (4, or 8 for FL_F64). */
static inline size_t fl_value_size(fl_dtype dt)
{
    return fl_formats[dt].values == FL_F64 ? 8 : 4;
}

#endif
