namespace LiveMigration.Shared.Model;

public enum VolumeType { Internal, Leaf }
public enum VolumeFormat { Cow, Raw }
public enum Legality { Legal, Illegal }

/// <summary>
/// How a volume takes its space (VDSM's volume TYPE). <see cref="Preallocated"/> only for a base volume: a raw file
/// allocated whole (<c>preallocation=falloc</c>), or a qcow2 file with all its metadata allocated (<c>preallocation=metadata</c>).
/// </summary>
public enum VolumeAllocation { Sparse, Preallocated }

/// <summary>One layer of an image as a domain's metadata describes it.</summary>
public sealed record VolumeInfo(
    DomainId Domain,
    ImageId Image,
    VolumeId Id,
    /// <summary>The parent, or null for a base volume. Its domain differs from <see cref="Domain"/> for a cross-domain parent.</summary>
    VolumeRef? Parent,
    VolumeType Type,
    VolumeFormat Format,
    Legality Legality,
    /// <summary>Virtual size in bytes, as the guest sees it.</summary>
    long Capacity,
    /// <summary>Bumped each time the volume's data or metadata is finalized (copy verified, re-pointed).</summary>
    int Generation,
    DateTimeOffset CreatedAt,
    /// <summary>Bytes the volume takes on the domain (allocated, not virtual).</summary>
    long AllocatedBytes,
    /// <summary>The migration that made this volume (DESIGN §7 invariant 3); null for a volume an operator made.</summary>
    VolumeOwner? Owner = null,
    /// <summary>Sparse, or preallocated as it was made (a base only); a copy keeps it.</summary>
    VolumeAllocation Allocation = VolumeAllocation.Sparse);

/// <summary>
/// Who made a volume: the migration that created it, and the generation it ran under. A migration
/// adopts and deletes only the volumes it owns. <paramref name="Generation"/> is meant to be the SPM's
/// fencing generation (DESIGN §7a); until the pool has a lease it is <see cref="Unfenced"/> (0). A step's
/// attempt number is not used: attempts count per step, so they do not order two different steps.
/// </summary>
public sealed record VolumeOwner(MigrationId Migration, long Generation)
{
    /// <summary>The generation of every change made before the pool has an SPM lease.</summary>
    public const long Unfenced = 0;

    public override string ToString() => $"migration {Migration} (generation {Generation})";
}

/// <summary>An image on one domain: its volumes ordered base → leaf, as far as they are on this domain.</summary>
public sealed record ImageInfo(DomainId Domain, ImageId Id, IReadOnlyList<VolumeInfo> Volumes)
{
    public VolumeInfo Leaf => Volumes[^1];
    public long Capacity => Volumes.Count == 0 ? 0 : Volumes[^1].Capacity;
}

public sealed record DomainInfo(
    DomainId Id,
    string Name,
    string Kind,
    /// <summary>The capacity limit the domain was created with, in bytes.</summary>
    long CapacityBytes,
    /// <summary>Bytes the volumes on it take (allocated, as volumes are thin).</summary>
    long UsedBytes,
    /// <summary>Free bytes on the file system (or the sim's model) under the domain.</summary>
    long FilesystemFreeBytes,
    /// <summary>When <see cref="UsedBytes"/> was counted, when that may be before now (a count kept for reports); null: now.</summary>
    DateTimeOffset? UsedCountedAt = null)
{
    /// <summary>What new data may still take: the lower of the capacity left and the file system's free space.</summary>
    public long AvailableBytes => Math.Max(0, Math.Min(CapacityBytes - UsedBytes, FilesystemFreeBytes));
}

/// <summary>Progress of a long copy, in bytes.</summary>
public readonly record struct CopyProgress(long Done, long Total);
