using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Storage;

/// <summary>
/// What a storage change is fenced by (DESIGN §7 invariant 6): the SPM lease's generation, and the check, made just
/// before each change, that the lease record on storage still names this holder and generation (FENCED otherwise).
/// </summary>
public interface IStorageFence
{
    /// <summary>The generation to write as the owner's generation of what this SPM makes; 0 while not held.</summary>
    long Generation { get; }

    Task CheckAsync(CancellationToken ct = default);

    /// <summary>
    /// <see cref="CheckAsync"/>, and the change counted as in progress until the result is disposed: a lease is not
    /// released (so no other SPM starts) while a change it fenced may still write, such as a copy whose qemu-img is
    /// being killed.
    /// </summary>
    Task<IDisposable> BeginChangeAsync(CancellationToken ct = default);
}

/// <summary>
/// The fence of the change in progress, for the adapters' commit points: a change that runs long (a copy of a layer, then
/// its verification) checks the fence again just before it writes metadata, so an SPM paused in the middle of a copy
/// (SIGSTOP, a long stall) and woken after another took over does not mark its copy LEGAL or write anything else.
/// Set by <see cref="FencedStorageDomain"/> for the duration of one call; flows into the adapter's awaits and nowhere else.
/// </summary>
public static class AmbientFence
{
    private static readonly AsyncLocal<IStorageFence?> Current = new();

    /// <summary>Sets the fence for the rest of the calling async method and what it awaits (an async method's changes to it do not leak to its caller).</summary>
    internal static void Enter(IStorageFence fence) => Current.Value = fence;

    /// <summary>Refuses with FENCED when the change in progress is fenced and its lease is no longer held; nothing when unfenced (a host's own writes).</summary>
    public static Task CheckAsync(CancellationToken ct = default) => Current.Value?.CheckAsync(ct) ?? Task.CompletedTask;
}

/// <summary>
/// A domain whose every change first passes the fence, so an SPM that lost its lease (paused, partitioned) cannot
/// change anything even before it notices, and is counted by the fence while it runs, so an SPM that gives its lease up
/// does so only once its changes ended. Reads pass straight through.
/// </summary>
public sealed class FencedStorageDomain(IStorageDomain inner, IStorageFence fence) : IStorageDomain
{
    public IStorageDomain Inner => inner;
    public DomainId Id => inner.Id;
    public string Name => inner.Name;
    public bool Reachable => inner.Reachable;
    public string Kind => inner.Kind;

    public Task<DomainInfo> DescribeAsync(CancellationToken ct = default) => inner.DescribeAsync(ct);
    public Task<DomainInfo> DescribeAsync(TimeSpan usedMaxAge, CancellationToken ct = default) => inner.DescribeAsync(usedMaxAge, ct);
    public Task<IReadOnlyList<ImageId>> ListImagesAsync(CancellationToken ct = default) => inner.ListImagesAsync(ct);
    public Task<ImageInfo> DescribeImageAsync(ImageId image, CancellationToken ct = default) => inner.DescribeImageAsync(image, ct);
    public Task<VolumeInfo> DescribeVolumeAsync(ImageId image, VolumeId volume, CancellationToken ct = default) => inner.DescribeVolumeAsync(image, volume, ct);
    public string Locate(ImageId image, VolumeId volume) => inner.Locate(image, volume);

    public async Task<VolumeInfo> CreateVolumeAsync(NewVolume spec, IStorageDomain? parentDomain = null, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        return await inner.CreateVolumeAsync(spec, Unwrap(parentDomain), ct);
    }

    public async Task<ImageInfo> CloneImageStructureAsync(IStorageDomain source, ImageId image, VolumeOwner owner, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        return await inner.CloneImageStructureAsync(Unwrap(source)!, image, owner, ct);
    }

    public async Task<VolumeInfo> CopyVolumeDataAsync(IStorageDomain source, ImageId image, VolumeId volume,
        IProgress<CopyProgress>? progress = null, CancellationToken ct = default, CopyRate? rate = null)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        return await inner.CopyVolumeDataAsync(Unwrap(source)!, image, volume, progress, ct, rate);
    }

    public async Task<VolumeInfo> SetParentAsync(ImageId image, VolumeId volume, VolumeRef newParent, IStorageDomain? parentDomain,
        bool rewriteHeader, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        return await inner.SetParentAsync(image, volume, newParent, Unwrap(parentDomain), rewriteHeader, ct);
    }

    public async Task<VolumeInfo> MarkLegalAsync(ImageId image, VolumeId volume, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        return await inner.MarkLegalAsync(image, volume, ct);
    }

    /// <summary>
    /// Fenced up to its decision, the rename that makes the image unreadable; a file domain unlinks the renamed folder's
    /// files after that, unfenced (no one else ever reads or writes a folder of that name; see ImageFolderRemover).
    /// </summary>
    public async Task DeleteImageAsync(ImageId image, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        await inner.DeleteImageAsync(image, ct);
    }

    public async Task<IReadOnlyList<VolumeInfo>> DeleteOwnedVolumesAsync(ImageId image, VolumeOwner owner, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        return await inner.DeleteOwnedVolumesAsync(image, owner, ct);
    }

    public async Task<IReadOnlyList<VolumeInfo>> AdoptVolumesAsync(ImageId image, MigrationId from, VolumeOwner to, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        return await inner.AdoptVolumesAsync(image, from, to, ct);
    }

    public async Task<IReadOnlyList<VolumeInfo>> RemoveIllegalLeftoversAsync(IReadOnlySet<ImageId> inUse, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        return await inner.RemoveIllegalLeftoversAsync(inUse, ct);
    }

    public async Task MarkMigrationAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        await inner.MarkMigrationAsync(migration, image, mark, ct);
    }

    public async Task UnmarkMigrationAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default)
    {
        using var change = await fence.BeginChangeAsync(ct);
        AmbientFence.Enter(fence);
        await inner.UnmarkMigrationAsync(migration, image, mark, ct);
    }

    public Task<bool> HasMigrationMarkAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default) =>
        inner.HasMigrationMarkAsync(migration, image, mark, ct);

    /// <summary>Adapters check the kind (and the sim its own type) of the other domain: they get the real one.</summary>
    private static IStorageDomain? Unwrap(IStorageDomain? domain) => domain is FencedStorageDomain f ? f.Inner : domain;
}
