using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage;

/// <summary>A new volume, as asked of a domain.</summary>
/// <param name="Parent">Null for a base volume. A parent on another domain makes a cross-domain chain (post-copy's first step).</param>
/// <param name="Legality">A volume whose data is complete on creation (an empty overlay) is LEGAL; a twin still to be filled is ILLEGAL.</param>
public sealed record NewVolume(
    ImageId Image,
    VolumeId Id,
    VolumeFormat Format,
    long Capacity,
    VolumeRef? Parent = null,
    Legality Legality = Legality.Legal);

/// <summary>
/// The storage port: one storage domain. Every operation is idempotent when repeated with the
/// same arguments (it returns what the first call made), and refuses with an
/// <see cref="OperationFailedException"/> whose code says why. Operations that involve a second
/// domain take it as an argument; both must be of the same kind.
/// </summary>
public interface IStorageDomain
{
    DomainId Id { get; }
    /// <summary><c>file</c> or <c>sim</c>.</summary>
    string Kind { get; }

    Task<DomainInfo> DescribeAsync(CancellationToken ct = default);
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

    /// <summary>Pre-copy step 2: the image's chain from <paramref name="source"/> recreated here (same ids, parents, formats, capacities), empty and ILLEGAL.</summary>
    Task<ImageInfo> CloneImageStructureAsync(IStorageDomain source, ImageId image, CancellationToken ct = default);

    /// <summary>
    /// Copies one layer's data (only its allocated clusters) from <paramref name="source"/> into
    /// its twin here, verifies it, then marks the twin LEGAL and bumps its generation. The twin
    /// stays ILLEGAL on any failure. Repeating it on a LEGAL twin returns at once.
    /// </summary>
    Task<VolumeInfo> CopyVolumeDataAsync(IStorageDomain source, ImageId image, VolumeId volume,
        IProgress<CopyProgress>? progress = null, CancellationToken ct = default);

    /// <summary>
    /// Re-points a volume's parent to <paramref name="newParent"/> (same volume id on this or
    /// another domain, same data). With <paramref name="rewriteHeader"/> the qcow2 header is
    /// rewritten too; without it only the metadata (when a running QEMU owns the file and
    /// rewrites the header itself with change-backing-file).
    /// </summary>
    Task<VolumeInfo> SetParentAsync(ImageId image, VolumeId volume, VolumeRef newParent, IStorageDomain? parentDomain,
        bool rewriteHeader, CancellationToken ct = default);

    /// <summary>Marks a volume LEGAL and bumps its generation (a mirrored leaf after its pivot).</summary>
    Task<VolumeInfo> MarkLegalAsync(ImageId image, VolumeId volume, CancellationToken ct = default);

    /// <summary>Deletes the image's volumes on this domain: first all marked ILLEGAL, then removed, so a crash half-way leaves only ILLEGAL leftovers.</summary>
    Task DeleteImageAsync(ImageId image, CancellationToken ct = default);

    /// <summary>
    /// Removes every image that holds an ILLEGAL volume (a leftover of a failed operation),
    /// except those in <paramref name="inUse"/> (images of migrations still running), and
    /// stray temporary files. Returns the volumes removed.
    /// </summary>
    Task<IReadOnlyList<VolumeInfo>> RemoveIllegalLeftoversAsync(IReadOnlySet<ImageId> inUse, CancellationToken ct = default);
}
