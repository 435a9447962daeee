using LiveMigration.HostNode.Storage;
using LiveMigration.Shared.Migration;
using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Steps;

/// <summary>
/// The leaves a disk's plan names, by id (DESIGN §3): the source leaf the drive ran on at validation (the pre-copy
/// mirror writes its twin) and the post-copy's new leaf. Every step takes its leaf from here. Plans journaled before
/// <see cref="DiskPlan.SourceLeaf"/> existed name no source leaf, nor does a plan that makes a split chain whole (its source
/// holds only the older layers, the top of which the new leaf lies over): for those the leaf is the one the source image's
/// metadata orders last, and this is the only place that reads it so.
/// </summary>
public static class PlannedLeaves
{
    /// <summary>The leaf of the source chain: the plan's, or for an old plan the source image's metadata leaf.</summary>
    public static async Task<VolumeId> SourceLeafAsync(DiskPlan disk, IStorageDomain source, CancellationToken ct = default) =>
        disk.SourceLeaf ?? (await source.DescribeImageAsync(disk.Image, ct)).Leaf.Id;

    /// <summary>
    /// The destination leaf the drive moves to: pre-copy, the twin of the source leaf (an old plan: the clone's metadata
    /// leaf); post-copy, the new leaf.
    /// </summary>
    public static async Task<VolumeInfo> DestinationLeafAsync(DiskPlan disk, MigrationStrategy strategy, IStorageDomain destination,
        CancellationToken ct = default)
    {
        if (strategy == MigrationStrategy.PostCopy)
            return await destination.DescribeVolumeAsync(disk.Image, disk.NewLeaf, ct);
        return disk.SourceLeaf is { } named
            ? await destination.DescribeVolumeAsync(disk.Image, named, ct)
            : (await destination.DescribeImageAsync(disk.Image, ct)).Leaf;
    }

    /// <summary>
    /// <see cref="DestinationLeafAsync"/>, or null when the destination holds no such leaf (not made yet, or deleted by
    /// the rollback): for the checks that decide from whether it is there, and whose it is.
    /// </summary>
    public static async Task<VolumeInfo?> FindDestinationLeafAsync(DiskPlan disk, MigrationStrategy strategy, IStorageDomain destination,
        CancellationToken ct = default)
    {
        try
        {
            return await DestinationLeafAsync(disk, strategy, destination, ct);
        }
        catch (OperationFailedException e) when (e.Code is ErrorCodes.ImageNotFound or ErrorCodes.VolumeNotFound)
        {
            return null;
        }
    }

    /// <summary>The id of <see cref="DestinationLeafAsync"/>, read from the plan alone where it names it (the volume may be gone).</summary>
    public static async Task<VolumeId> DestinationLeafIdAsync(DiskPlan disk, MigrationStrategy strategy, IStorageDomain destination,
        CancellationToken ct = default) =>
        strategy == MigrationStrategy.PostCopy ? disk.NewLeaf
        : disk.SourceLeaf ?? (await destination.DescribeImageAsync(disk.Image, ct)).Leaf.Id;
}
