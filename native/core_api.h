/* The public face of imago's C core.  This file is read twice: by core.c, and
 * verbatim by cffi's cdef in build_core.py, so it holds declarations only: no
 * preprocessor lines, no macros.  See core.c for what each function owns.
 *
 * Every function that can fail returns an ic_status (or NULL) and leaves a
 * message in ic_errmsg(store); the Python side turns the code into an
 * exception in exactly one place (pager/_native.py). */

typedef struct ic_store ic_store;
typedef struct ic_tree ic_tree;
typedef struct ic_dirty ic_dirty;

enum ic_status {
    IC_OK = 0,
    IC_CORRUPT = 1,   /* bytes from disk failed a checksum or a bounds check */
    IC_RANGE = 2,     /* an address or length from the caller is out of range */
    IC_NOMEM = 3,
    IC_IO = 4,        /* mmap failed */
    IC_MISSING = 5,   /* a location names a segment that is not mapped */
    IC_FULL = 6       /* ic_commit_build: the commit does not fit in the segment */
};

/* The next commit of a log.  The caller sets the first block when the log
 * starts or moves to a new segment, and meta, meta_len and checkpoint for each
 * commit; ic_commit_build fills the second block, and ic_commit_done advances
 * the first to describe the commit after.  See core.c, "the commit builder". */
typedef struct ic_commit {
    uint64_t seq;           /* the number this commit gets */
    uint64_t parent;
    uint64_t prev_sum;      /* checksum of the previous record */
    uint32_t segno;
    uint32_t slot;          /* where the record goes */
    uint64_t seg_slots;     /* slots in the segment */
    uint64_t ckpt_slot;     /* this segment's newest checkpoint (for a plain commit) */
    uint64_t prev_ckpt;     /* location of the newest checkpoint (for a checkpoint) */
    uint64_t zero_from;     /* slots from here on are known to be zeros */
    uint64_t salt;
    uint64_t since_ckpt;    /* records since this segment's newest checkpoint */
    uint64_t ckpt_records;  /* a checkpoint is due after this many records */
    uint64_t ckpt_nodes;    /* ... or when this many page-table nodes are dirty */
    uint64_t pages_since_ckpt;  /* pages the records since the checkpoint wrote */
    uint64_t ckpt_pages;    /* ... or before replay would pass this many pages */
    int checkpoint;         /* set by ic_commit_build: this commit is a checkpoint */
    const uint8_t *meta;
    uint32_t meta_len;

    uint8_t *buf;           /* the bytes to write at `slot`: whole slots */
    uint64_t buf_len;
    uint64_t buf_cap;       /* kept between commits; ic_commit_release frees it */
    uint64_t nslots;        /* slots the commit occupies (buf may add one zeroed slot) */
    uint64_t need_slots;    /* on IC_FULL: what a fresh segment needs for it */
    uint64_t record_sum;
    uint64_t time_ns;
    uint32_t record_slots;
    uint32_t npages;
    uint32_t nnodes;
    uint32_t nfreed;
    uint8_t root[32];
    int depth;
    void *undo;
} ic_commit;

uint64_t ic_hash(const uint8_t *data, size_t len, uint64_t seed);

ic_store *ic_store_new(uint32_t page_size, uint64_t salt, const uint8_t *image_id);
void ic_store_free(ic_store *st);
const char *ic_errmsg(ic_store *st);
int ic_errcode(ic_store *st);
int ic_store_map(ic_store *st, uint32_t segno, int fd, uint64_t len);
void ic_store_unmap(ic_store *st, uint32_t segno);
int ic_store_attach(ic_store *st, int dirfd, uint32_t segno, uint64_t *seg_size_out);
void ic_store_set_limit(ic_store *st, uint32_t segno, uint64_t limit);
const uint8_t *ic_store_segment(ic_store *st, uint32_t segno, uint64_t *len_out);
uint64_t ic_page_sum(ic_store *st, uint64_t page_no, const uint8_t *data);
uint64_t ic_node_sum(ic_store *st, int level, const uint8_t *data);
int ic_verify_slot(ic_store *st, uint64_t loc, uint64_t sum, uint64_t page_no, uint64_t commit);

ic_tree *ic_tree_new(ic_store *st, const uint8_t *root_entry, int depth);
void ic_tree_free(ic_tree *t);
int ic_tree_depth(ic_tree *t);
uint64_t ic_tree_dirty_nodes(ic_tree *t);
int ic_tree_get(ic_tree *t, uint64_t page_no, uint8_t *entry_out);
int ic_tree_apply(ic_tree *t, uint64_t n, const uint8_t *pairs, uint64_t first_loc,
                  uint64_t commit, uint8_t *olds_out);
int ic_tree_apply_freed(ic_tree *t, uint64_t n, const uint8_t *pages, uint64_t commit,
                        uint8_t *olds_out);
int ic_tree_restore(ic_tree *t, uint64_t n, const uint8_t *pages, uint64_t stride,
                    const uint8_t *olds);
int ic_tree_serialize(ic_tree *t, uint64_t first_loc, uint8_t *out, uint64_t cap,
                      uint8_t *root_out, int *depth_out);
void ic_tree_adopt(ic_tree *t, const uint8_t *root_entry, int depth, uint64_t first_loc,
                   uint64_t nnodes);
uint64_t ic_tree_usage(ic_tree *t, uint32_t segno);
uint32_t ic_tree_usage_next(ic_tree *t, uint32_t from);
int ic_tree_set_usage(ic_tree *t, uint32_t segno, uint64_t live);
int ic_tree_check(ic_tree *t, uint64_t *pages_out, uint64_t *nodes_out);

/* segment cleaning (core.c, "segment cleaning (vacuum)") */
int ic_tree_mark(ic_tree *t, uint8_t *bitmap, const uint64_t *seg_base, uint32_t nsegs);
int ic_vac_collect(ic_tree **trees, uint32_t ntrees, const uint8_t *victims, uint32_t nflags,
                   uint8_t *out, uint64_t cap, uint64_t *n_out);
int ic_vac_relocate(ic_tree *t, const uint8_t *victims, uint32_t nflags, const uint8_t *pages,
                    uint64_t n, uint64_t base);
int ic_vac_copy(ic_store *st, const uint8_t *pages, uint64_t n, uint8_t *dst,
                uint8_t *pairs_out);

ic_dirty *ic_dirty_new(uint32_t page_size);
void ic_dirty_free(ic_dirty *d);
void ic_dirty_clear(ic_dirty *d);
uint64_t ic_dirty_count(ic_dirty *d);
int ic_dirty_drop(ic_dirty *d, uint64_t page_no);
int ic_gather(ic_tree *t, ic_dirty *d, uint8_t *pairs_out, uint8_t *pages_out,
              uint64_t *nwritten, uint8_t *freed_out, uint64_t *nfreed);

int ic_commit_build(ic_tree *t, ic_dirty *d, ic_commit *c);
void ic_commit_undo(ic_tree *t, ic_commit *c);
void ic_commit_done(ic_tree *t, ic_dirty *d, ic_commit *c);
void ic_commit_release(ic_commit *c);

const uint8_t *ic_page_read(ic_tree *t, ic_dirty *d, uint64_t page_no);
uint8_t *ic_page_for_write(ic_tree *t, ic_dirty *d, uint64_t page_no);
int ic_read(ic_tree *t, ic_dirty *d, uint64_t addr, uint8_t *out, uint64_t len);
int ic_write(ic_tree *t, ic_dirty *d, uint64_t addr, const uint8_t *src, uint64_t len);
int ic_read_u64(ic_tree *t, ic_dirty *d, uint64_t addr, uint64_t *out);
int ic_write_u64(ic_tree *t, ic_dirty *d, uint64_t addr, uint64_t value);

/* ic_commit_write: build, write, sync and finish one commit (core.c, "a whole
 * commit in one call"); on IC_IO, io says which step failed and how. */
enum ic_stage { IC_STAGE_NONE = 0, IC_STAGE_WRITE = 1, IC_STAGE_SYNC = 2 };
typedef struct ic_io {
    int stage;          /* the step that failed: IC_STAGE_WRITE or IC_STAGE_SYNC */
    int err;            /* its errno */
    uint64_t written;   /* bytes of the commit the write passed to the file first */
} ic_io;
int ic_commit_write(ic_tree *t, ic_dirty *d, ic_commit *c, int fd, const char *meta,
                    uint32_t meta_len, ic_io *io);
