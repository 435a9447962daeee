using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage;

/// <summary>A new volume, as asked of a domain.</summary>
/// <param name="Parent">Null for a base volume. A parent on another domain makes a cross-domain chain (post-copy's first step).</param>
/// <param name="Legality">A volume whose data is complete on creation (an empty overlay) is LEGAL; a twin still to be filled is ILLEGAL.</param>
/// <param name="Owner">
/// The migration making it (post-copy's cross-domain leaf), written into its metadata. With an owner the
/// create is refused with DESTINATION_HOLDS_IMAGE when the domain holds any volume of the image that this
/// migration does not own, and an existing volume is returned only when this migration made it.
/// Null for the operator's volumes (new disks, snapshots).
/// </param>
/// <param name="Allocation">Preallocated only for a base volume (qemu-img refuses preallocation under a backing file).</param>
public sealed record NewVolume(
    ImageId Image,
    VolumeId Id,
    VolumeFormat Format,
    long Capacity,
    VolumeRef? Parent = null,
    Legality Legality = Legality.Legal,
    VolumeOwner? Owner = null,
    VolumeAllocation Allocation = VolumeAllocation.Sparse);

/// <summary>
/// The storage port: one storage domain. Every operation is idempotent when repeated with the
/// same arguments (it returns what the first call made), and refuses with an
/// <see cref="OperationFailedException"/> whose code says why. Operations that involve a second
/// domain take it as an argument; both must be of the same kind.
/// </summary>
public interface IStorageDomain
{
    DomainId Id { get; }
    /// <summary>The operator's name for it, as read when it was attached (known even while the domain is not reachable).</summary>
    string Name { get; }
    /// <summary><c>file</c> or <c>sim</c>.</summary>
    string Kind { get; }
    /// <summary>Whether the domain can be read now (a file domain: its metadata is found; unmounted, it is not). Cheap.</summary>
    bool Reachable { get; }

    Task<DomainInfo> DescribeAsync(CancellationToken ct = default);
    /// <summary>
    /// As <see cref="DescribeAsync(CancellationToken)"/>, but the used bytes may be a count up to <paramref name="usedMaxAge"/>
    /// old (a file domain counts them by walking every file): for reports. A check of the room for a copy counts anew.
    /// </summary>
    Task<DomainInfo> DescribeAsync(TimeSpan usedMaxAge, CancellationToken ct = default);
    Task<IReadOnlyList<ImageId>> ListImagesAsync(CancellationToken ct = default);
    /// <summary>The image's volumes on this domain, base → leaf (a cross-domain parent is not listed: it is on its own domain).</summary>
    Task<ImageInfo> DescribeImageAsync(ImageId image, CancellationToken ct = default);
    Task<VolumeInfo> DescribeVolumeAsync(ImageId image, VolumeId volume, CancellationToken ct = default);

    /// <summary>Where the hypervisor opens a volume of this domain (a path; for sim an opaque locator). Pure: it does not check existence.</summary>
    string Locate(ImageId image, VolumeId volume);

    /// <summary>
    /// Creates a volume. A parent on this domain turns INTERNAL. A parent on another domain is
    /// given as <paramref name="parentDomain"/>; its file becomes the backing by absolute path.
    /// </summary>
    Task<VolumeInfo> CreateVolumeAsync(NewVolume spec, IStorageDomain? parentDomain = null, CancellationToken ct = default);

    /// <summary>
    /// Pre-copy step 2 (and post-copy's twins): the image's chain from <paramref name="source"/> recreated here
    /// (same ids, parents, formats, capacities, allocation), empty and ILLEGAL, each volume owned by <paramref name="owner"/>.
    /// Refused with DESTINATION_HOLDS_IMAGE when this domain holds any volume of the image that
    /// <paramref name="owner"/>'s migration did not make; a repeat by the same migration returns its volumes.
    /// </summary>
    Task<ImageInfo> CloneImageStructureAsync(IStorageDomain source, ImageId image, VolumeOwner owner, CancellationToken ct = default);

    /// <summary>
    /// Copies one layer's data (only its allocated clusters) from <paramref name="source"/> into
    /// its twin here, verifies it, then marks the twin LEGAL and bumps its generation. The twin
    /// stays ILLEGAL on any failure. Repeating it on a LEGAL twin returns at once. A preallocated twin
    /// is still preallocated after the copy. <paramref name="rate"/> limits the copy's speed and may change while it runs:
    /// the copy follows a change at once (null: unlimited).
    /// </summary>
    Task<VolumeInfo> CopyVolumeDataAsync(IStorageDomain source, ImageId image, VolumeId volume,
        IProgress<CopyProgress>? progress = null, CancellationToken ct = default, CopyRate? rate = null);

    /// <summary>
    /// Re-points a volume's parent to <paramref name="newParent"/> (same volume id on this or
    /// another domain, same data). With <paramref name="rewriteHeader"/> the qcow2 header is
    /// rewritten too; without it only the metadata (when a running QEMU owns the file and
    /// rewrites the header itself with change-backing-file).
    /// </summary>
    Task<VolumeInfo> SetParentAsync(ImageId image, VolumeId volume, VolumeRef newParent, IStorageDomain? parentDomain,
        bool rewriteHeader, CancellationToken ct = default);

    /// <summary>Marks a volume LEGAL and bumps its generation (a mirrored leaf after its pivot); a preallocated one is allocated whole again first.</summary>
    Task<VolumeInfo> MarkLegalAsync(ImageId image, VolumeId volume, CancellationToken ct = default);

    /// <summary>
    /// Deletes all the image's volumes on this domain (a migration's source once the VM runs elsewhere, an
    /// operator's disk). Needs no free space, and a crash half-way leaves nothing that reads as a volume, only
    /// leftovers <see cref="RemoveIllegalLeftoversAsync"/> removes. Refused with VOLUME_IN_USE (transient) while
    /// any process has one of its volumes open. Quiet when the image is not here. Once it answers the image is gone
    /// for every reader; its space may come back a moment later (a file domain unlinks the files after answering).
    /// </summary>
    Task DeleteImageAsync(ImageId image, CancellationToken ct = default);

    /// <summary>
    /// A rollback's delete: removes only the volumes of the image that <paramref name="owner"/>'s migration made,
    /// with the same guarantees as <see cref="DeleteImageAsync"/>; volumes of others stay. Refused with CONFLICT
    /// when a volume it does not own lies over one it owns, or when a volume was made by a newer generation
    /// (a stale command). Returns the volumes removed (empty on a repeat).
    /// </summary>
    Task<IReadOnlyList<VolumeInfo>> DeleteOwnedVolumesAsync(ImageId image, VolumeOwner owner, CancellationToken ct = default);

    /// <summary>
    /// Gives every volume of the image here that <paramref name="from"/>'s migration made to <paramref name="to"/> (metadata
    /// only, each volume's record rewritten whole): a migration that takes over the copy an abandoned one left, so that its own
    /// ownership checks hold from then on. A repeat finds nothing left to adopt. Returns the volumes adopted.
    /// </summary>
    Task<IReadOnlyList<VolumeInfo>> AdoptVolumesAsync(ImageId image, MigrationId from, VolumeOwner to, CancellationToken ct = default);

    /// <summary>
    /// Removes the leftovers of failed operations: every ILLEGAL volume and the volumes that lie over it (or over
    /// a parent that is gone), never a LEGAL volume with its whole chain in place; also half-deleted files and
    /// stray temporary files. Images in <paramref name="inUse"/> (migrations still running) and images with a
    /// leftover some process has open are skipped. Returns the volumes removed.
    /// </summary>
    Task<IReadOnlyList<VolumeInfo>> RemoveIllegalLeftoversAsync(IReadOnlySet<ImageId> inUse, CancellationToken ct = default);

    /// <summary>
    /// Records durably on this domain what became of <paramref name="migration"/>'s copy of <paramref name="image"/> here
    /// (<see cref="MigrationMark"/>), so a late command of that migration, delivered after a host restart forgot it, finds
    /// the mark and changes nothing (DESIGN §7.6, §7.7). Per disk: one disk of a migration may be kept on a domain while
    /// another is undone there. Repeating it is harmless.
    /// </summary>
    Task MarkMigrationAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default);

    /// <summary>Takes a mark back: a rollback's delete that deleted nothing (a volume was in use) leaves the copy as it was.</summary>
    Task UnmarkMigrationAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default);

    /// <summary>Whether <see cref="MarkMigrationAsync"/> recorded <paramref name="mark"/> for <paramref name="migration"/>'s <paramref name="image"/> on this domain.</summary>
    Task<bool> HasMigrationMarkAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default);
}

/// <summary>What became of a migration's copy on its destination domain: late commands that would contradict it are refused.</summary>
public enum MigrationMark
{
    /// <summary>Undone by its rollback's delete: no late step makes or switches to the copy again.</summary>
    Ended,
    /// <summary>The disk's chain now (its drive switched there and the migration rolled forward): no late rollback deletes it.</summary>
    Kept,
    /// <summary>On the source domain: the migration deleted the image here; an image found here later came back with another migration.</summary>
    Retired,
}
