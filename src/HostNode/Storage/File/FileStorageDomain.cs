using System.Text.Json.Nodes;
using LiveMigration.HostNode.Concurrency;
using LiveMigration.Shared.Model;
using IOFile = System.IO.File;

namespace LiveMigration.HostNode.Storage.File;

/// <summary>
/// The <c>file</c> storage domain: a folder in the VDSM-like layout of DESIGN §4, its volumes
/// made and copied with qemu-img, its metadata in KEY=VALUE files written atomically.
/// Every path is built from typed UUID ids; names read from disk are parsed as UUIDs first and
/// anything else is ignored, so nothing from outside can steer a path out of the domain.
/// </summary>
public sealed class FileStorageDomain : IStorageDomain
{
    public const string FileKind = DomainMetadata.FileKind;
    private const string MetaSuffix = ".meta";
    /// <summary>
    /// Prefix of an image folder being deleted: renamed to <c>_remove_me_&lt;imageId&gt;_&lt;random&gt;</c> (VDSM's word) in one
    /// atomic rename that needs no free space, then emptied. Not a UUID, so no reader sees it; the cleanup finishes it.
    /// </summary>
    public const string RemovingPrefix = "_remove_me_";
    /// <summary>What an empty qcow2 overlay takes on disk (header, tables), counted before creating one.</summary>
    private const long EmptyQcow2Bytes = 1024 * 1024;
    private static readonly TimeSpan ProgressPollInterval = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan WriteBehindInterval = TimeSpan.FromMilliseconds(100);

    // Keyed by full path so that two instances attached to the same folder still serialize.
    private static readonly KeyedLocks<string> Locks = new(StringComparer.Ordinal);

    private readonly DomainMetadata _metadata;

    /// <summary>
    /// The bytes the images took when last counted, and when (<see cref="Environment.TickCount64"/>): a host's report
    /// takes a count up to the age it names, as a domain of thousands of volumes was walked file by file at every report
    /// of every host. Not taken after a change this instance made to an image (<see cref="_changes"/>, counted as each
    /// begins and ends), so its own changes show at once; a guest's writes and other hosts' changes show once the count is
    /// older than the report's age. Space checks count anew.
    /// </summary>
    private volatile UsageCount? _usage;
    private long _changes;
    private sealed record UsageCount(long Bytes, long CountedAtMs, DateTimeOffset CountedAt, long Changes);

    private FileStorageDomain(string domainPath, DomainMetadata metadata)
    {
        DomainPath = domainPath;
        _metadata = metadata;
    }

    public DomainId Id => _metadata.Id;
    public string Kind => FileKind;
    public string Name => _metadata.Name;
    /// <summary><c>&lt;domainRoot&gt;/&lt;id&gt;</c>, absolute.</summary>
    public string DomainPath { get; }
    private string ImagesPath => Path.Combine(DomainPath, "images");

    /// <summary>Creates the domain's folder and metadata; repeating it with the same name and capacity attaches to it.</summary>
    public static async Task<FileStorageDomain> CreateAsync(string domainRoot, DomainId id, string name, long capacityBytes,
        CancellationToken ct = default)
    {
        DomainMetadata.ValidateName(name);
        if (capacityBytes <= 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"storage domain capacity must be positive, got {capacityBytes} bytes");
        var domainPath = DomainPathOf(domainRoot, id);
        var metadataPath = MetadataPathOf(domainPath);
        await WithLockAsync(domainPath, async () =>
        {
            if (IOFile.Exists(metadataPath))
            {
                var existing = DomainMetadata.Parse(await KeyValueFile.ReadAsync(metadataPath, ct), metadataPath);
                if (existing.Id != id || existing.Name != name || existing.CapacityBytes != capacityBytes)
                    throw new OperationFailedException(ErrorCodes.Conflict,
                        $"storage domain {id} exists at {domainPath} as '{existing.Name}' with capacity {existing.CapacityBytes} bytes; " +
                        $"asked for '{name}' with {capacityBytes} bytes");
            }
            else
            {
                StorageModes.CreateFolder(Path.Combine(domainPath, "images"));
                StorageModes.CreateFolder(Path.GetDirectoryName(metadataPath)!);
                await KeyValueFile.WriteAtomicallyAsync(metadataPath, new DomainMetadata(name, id, "", capacityBytes).ToKeyValues(), ct);
                Posix.FsyncDirectory(domainPath);
            }
        }, ct);
        return await AttachAsync(domainRoot, id, ct);
    }

    /// <summary>Opens an existing domain.</summary>
    public static async Task<FileStorageDomain> AttachAsync(string domainRoot, DomainId id, CancellationToken ct = default)
    {
        var domainPath = DomainPathOf(domainRoot, id);
        var metadataPath = MetadataPathOf(domainPath);
        if (!IOFile.Exists(metadataPath))
            throw new OperationFailedException(ErrorCodes.DomainNotFound, $"no storage domain {id} under {Path.GetFullPath(domainRoot)}");
        var metadata = DomainMetadata.Parse(await KeyValueFile.ReadAsync(metadataPath, ct), metadataPath);
        if (metadata.Id != id)
            throw new OperationFailedException(ErrorCodes.Conflict, $"domain folder {domainPath} holds metadata of domain {metadata.Id}");
        StorageModes.CreateFolder(Path.Combine(domainPath, "images"));
        return new FileStorageDomain(domainPath, metadata);
    }

    private static string DomainPathOf(string domainRoot, DomainId id)
    {
        if (string.IsNullOrWhiteSpace(domainRoot))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, "the domain root folder must be given");
        return Path.Combine(Path.GetFullPath(domainRoot), id.ToString());
    }

    private static string MetadataPathOf(string domainPath) => Path.Combine(domainPath, "dom_md", "metadata");

    // ---------------------------------------------------------------- reading

    public Task<DomainInfo> DescribeAsync(CancellationToken ct = default) => DescribeAsync(TimeSpan.Zero, ct);

    public Task<DomainInfo> DescribeAsync(TimeSpan usedMaxAge, CancellationToken ct = default)
    {
        RequireReachable(); // an unmounted domain would report the bare mount point's figures
        var now = Environment.TickCount64;
        var changes = Interlocked.Read(ref _changes);
        long used;
        DateTimeOffset countedAt;
        // a zero age is an exact count, even within the clock's tick
        if (usedMaxAge > TimeSpan.Zero && _usage is { } kept && kept.Changes == changes && now - kept.CountedAtMs <= usedMaxAge.TotalMilliseconds)
            (used, countedAt) = (kept.Bytes, kept.CountedAt);
        else
        {
            countedAt = DateTimeOffset.UtcNow;
            used = CountUsedBytes();
            // kept only if no change of this domain's began meanwhile: the walk may have missed it
            _usage = new UsageCount(used, now, countedAt, changes);
        }
        long free;
        try
        {
            free = new DriveInfo(DomainPath).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new OperationFailedException(ErrorCodes.IoError, $"cannot read the free space under {DomainPath}: {e.Message}", e);
        }
        return Task.FromResult(new DomainInfo(Id, Name, Kind, _metadata.CapacityBytes, used, free, countedAt));
    }

    /// <summary>The bytes every image file takes, half-deleted images' too: a walk of every file of the domain.</summary>
    private long CountUsedBytes()
    {
        long used = 0;
        // Half-deleted images still take their space until the cleanup removes them.
        var removing = Directory.Exists(ImagesPath)
            ? Directory.EnumerateDirectories(ImagesPath, RemovingPrefix + "*").Where(folder => new DirectoryInfo(folder).LinkTarget is null)
            : [];
        foreach (var imageFolder in ImageFolders().Concat(removing))
        {
            try
            {
                foreach (var file in Directory.EnumerateFiles(imageFolder))
                    used += Posix.AllocatedBytes(file);
            }
            catch (DirectoryNotFoundException)
            {
                // deleted while counted (a half-deleted folder finished meanwhile): it takes nothing any more
            }
        }
        return used;
    }

    public Task<IReadOnlyList<ImageId>> ListImagesAsync(CancellationToken ct = default)
    {
        RequireReachable();
        return Task.FromResult<IReadOnlyList<ImageId>>(ImageFolders()
            .Select(folder => ImageId.Parse(Path.GetFileName(folder)))
            .OrderBy(image => image.Value)
            .ToList());
    }

    /// <summary>
    /// Absence is believed only while the domain itself is there. An unmounted (or vanished) domain reads as an empty
    /// folder: "the image is gone" read from it let a source delete call itself done (the image came back with the
    /// mount, never deleted), "no mark" let a refused late command through, and a mark or a volume written then went
    /// into the bare mount point. So every answer of absence, and every write, first finds the domain's metadata.
    /// </summary>
    public bool Reachable => IOFile.Exists(MetadataPathOf(DomainPath));

    private void RequireReachable()
    {
        if (!Reachable)
            throw new OperationFailedException(ErrorCodes.IoError,
                $"storage domain {Id} ({Name}) is not reachable at {DomainPath}: its metadata (dom_md/metadata) is not there (unmounted?); " +
                "nothing is read as missing or written there until it is back");
    }

    /// <summary>
    /// Whether something is absent, believed only with the domain reachable: looked at again after its metadata was
    /// found, so a domain mounted again between the first look and the check does not turn "unmounted" into "absent".
    /// </summary>
    private bool Absent(Func<bool> exists)
    {
        if (exists()) return false;
        RequireReachable();
        return !exists();
    }

    /// <summary>Image folders whose name is a UUID and that are real folders (a symlink could lead out of the domain).</summary>
    private IEnumerable<string> ImageFolders() =>
        Directory.Exists(ImagesPath)
            ? Directory.EnumerateDirectories(ImagesPath)
                .Where(folder => UuidText.TryParse(Path.GetFileName(folder), out _) && new DirectoryInfo(folder).LinkTarget is null)
            : [];

    public async Task<ImageInfo> DescribeImageAsync(ImageId image, CancellationToken ct = default)
    {
        var volumes = await ReadVolumesAsync(image, ct);
        if (volumes.Count == 0)
            throw new OperationFailedException(ErrorCodes.ImageNotFound, $"image {image} has no volumes on storage domain {Id} ({Name})");
        return new ImageInfo(Id, image, OrderBaseToLeaf(volumes));
    }

    public async Task<VolumeInfo> DescribeVolumeAsync(ImageId image, VolumeId volume, CancellationToken ct = default)
    {
        var metaPath = MetaPath(image, volume);
        if (Absent(() => IOFile.Exists(metaPath)))
            throw new OperationFailedException(ErrorCodes.VolumeNotFound, $"volume {volume} of image {image} is not on storage domain {Id} ({Name})");
        return ToInfo(image, volume, await ReadMetaAsync(image, volume, ct));
    }

    public string Locate(ImageId image, VolumeId volume) => Path.Combine(ImagePath(image), volume.ToString());

    private string ImagePath(ImageId image) => Path.Combine(ImagesPath, image.ToString());
    private string MetaPath(ImageId image, VolumeId volume) => Locate(image, volume) + MetaSuffix;

    private async Task<VolumeMetadata> ReadMetaAsync(ImageId image, VolumeId volume, CancellationToken ct)
    {
        var path = MetaPath(image, volume);
        var meta = VolumeMetadata.Parse(await KeyValueFile.ReadAsync(path, ct), path);
        if (meta.Domain != Id || meta.Image != image)
            throw new OperationFailedException(ErrorCodes.IoError,
                $"volume metadata {path} names domain {meta.Domain} image {meta.Image}, expected domain {Id} image {image}");
        return meta;
    }

    private async Task WriteMetaAsync(ImageId image, VolumeId volume, VolumeMetadata meta, CancellationToken ct)
    {
        // An SPM's change may have run long (a copy): its lease is checked again right before the metadata changes.
        await AmbientFence.CheckAsync(ct);
        await KeyValueFile.WriteAtomicallyAsync(MetaPath(image, volume), meta.ToKeyValues(), ct);
    }

    private VolumeInfo ToInfo(ImageId image, VolumeId volume, VolumeMetadata meta) =>
        new(Id, image, volume, meta.Parent, meta.Type, meta.Format, meta.Legality, meta.Capacity, meta.Generation,
            DateTimeOffset.FromUnixTimeSeconds(meta.CreatedUnixSeconds), Posix.AllocatedBytes(Locate(image, volume)), meta.Owner, meta.Allocation);

    /// <summary>Every volume of the image that has metadata; files whose name is not a UUID are ignored.</summary>
    private async Task<List<VolumeInfo>> ReadVolumesAsync(ImageId image, CancellationToken ct)
    {
        var folder = ImagePath(image);
        var volumes = new List<VolumeInfo>();
        if (Absent(() => Directory.Exists(folder))) return volumes;
        foreach (var metaPath in Directory.EnumerateFiles(folder, "*" + MetaSuffix))
        {
            var name = Path.GetFileName(metaPath)[..^MetaSuffix.Length];
            if (!UuidText.TryParse(name, out var volumeGuid)) continue;
            var volume = new VolumeId(volumeGuid);
            volumes.Add(ToInfo(image, volume, await ReadMetaAsync(image, volume, ct)));
        }
        return volumes;
    }

    /// <summary>
    /// Base → leaf. The leaf is the volume nobody here names as parent, preferring one typed LEAF
    /// and LEGAL (a post-copy destination briefly holds both the new leaf and the copied chain).
    /// Volumes off the leaf's chain come first, so <see cref="ImageInfo.Leaf"/> stays the leaf.
    /// </summary>
    private IReadOnlyList<VolumeInfo> OrderBaseToLeaf(List<VolumeInfo> volumes)
    {
        var byId = volumes.ToDictionary(v => v.Id);
        var parentsHere = volumes.Where(v => v.Parent is { } p && p.Domain == Id).Select(v => v.Parent!.Value.Volume).ToHashSet();
        var tip = volumes
            .Where(v => !parentsHere.Contains(v.Id))
            .OrderByDescending(v => v.Type == VolumeType.Leaf)
            .ThenByDescending(v => v.Legality == Legality.Legal)
            .ThenByDescending(v => v.CreatedAt)
            .ThenBy(v => v.Id.Value)
            .FirstOrDefault() ?? volumes.OrderBy(v => v.Id.Value).First(); // only a parent loop leaves no tip

        var chain = new List<VolumeInfo>();
        var seen = new HashSet<VolumeId>();
        for (VolumeInfo? current = tip; current is not null && seen.Add(current.Id);)
        {
            chain.Add(current);
            current = current.Parent is { } p && p.Domain == Id && byId.TryGetValue(p.Volume, out var parent) ? parent : null;
        }
        chain.Reverse();
        var rest = volumes.Where(v => !seen.Contains(v.Id)).OrderBy(v => Depth(v, byId)).ThenBy(v => v.Id.Value);
        return rest.Concat(chain).ToList();
    }

    private int Depth(VolumeInfo volume, Dictionary<VolumeId, VolumeInfo> byId)
    {
        var depth = 0;
        for (var current = volume; current.Parent is { } p && p.Domain == Id && byId.TryGetValue(p.Volume, out var parent) && depth < 256; current = parent)
            depth++;
        return depth;
    }

    // ---------------------------------------------------------------- creating

    public async Task<VolumeInfo> CreateVolumeAsync(NewVolume spec, IStorageDomain? parentDomain = null, CancellationToken ct = default)
    {
        ValidateSpec(spec);
        RequireReachable();
        var parent = await ResolveParentAsync(spec.Image, spec.Parent, parentDomain, ct);
        if (parent is not null && parent.Info.Capacity > spec.Capacity)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"volume {spec.Id} of {spec.Capacity} bytes cannot lie over parent {parent.Info.Id} of {parent.Info.Capacity} bytes");
        return await WithImageLockAsync(spec.Image, async () =>
        {
            if (spec.Owner is { } owner)
                RequireOnlyOwned(spec.Image, await ReadVolumesAsync(spec.Image, ct), owner);
            if (await ExistingMatchingAsync(spec, ct) is { } existing) return existing;
            await EnsureSpaceAsync(SpaceOfNew(spec),
                $"a {QemuImg.FormatName(spec.Format)} volume {spec.Id} of {spec.Capacity} bytes", ct);
            return await CreateLockedAsync(spec, parent, VolumeType.Leaf, clusterSize: null, ct);
        }, ct);
    }

    /// <summary>
    /// What a new volume is counted for: a raw one its whole capacity (sparse raw too: nothing bounds it below that),
    /// a qcow2 one its header and tables, and with preallocated metadata the L2 and refcount tables for its whole capacity.
    /// </summary>
    private static long SpaceOfNew(NewVolume spec) =>
        spec.Format == VolumeFormat.Raw ? spec.Capacity
        : spec.Allocation == VolumeAllocation.Preallocated ? EmptyQcow2Bytes + spec.Capacity / 4096
        : EmptyQcow2Bytes;

    private static void ValidateSpec(NewVolume spec)
    {
        if (spec.Allocation == VolumeAllocation.Preallocated && spec.Parent is not null)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"volume {spec.Id}: only a base volume can be preallocated, it has parent {spec.Parent}");
        if (spec.Capacity <= 0 || spec.Capacity % 512 != 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"volume {spec.Id} capacity must be a positive multiple of 512 bytes, got {spec.Capacity}");
        if (spec.Format == VolumeFormat.Raw && spec.Parent is not null)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"volume {spec.Id}: only a base volume can be RAW, it has parent {spec.Parent}");
        if (spec.Id.IsBlank || spec.Parent is { } p && (p.Volume.IsBlank || p.Volume == spec.Id))
            throw new OperationFailedException(ErrorCodes.InvalidId, $"volume {spec.Id} cannot be blank or its own parent ({spec.Parent})");
    }

    /// <summary>A parent as the new volume's backing names it: its id in the image folder, or its absolute path on another domain.</summary>
    private sealed record ResolvedParent(VolumeInfo Info, string Backing);

    private async Task<ResolvedParent?> ResolveParentAsync(ImageId image, VolumeRef? parentRef, IStorageDomain? parentDomain, CancellationToken ct)
    {
        if (parentRef is not { } p) return null;
        if (p.Domain == Id)
            return new ResolvedParent(await DescribeVolumeAsync(image, p.Volume, ct), p.Volume.ToString());
        if (parentDomain is null || parentDomain.Id != p.Domain)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"parent {p} is on another domain: that domain must be given (got {parentDomain?.Id.ToString() ?? "none"})");
        if (parentDomain.Kind != FileKind)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"parent domain {parentDomain.Id} is of kind {parentDomain.Kind}; a file domain can only lie over a file domain");
        var info = await parentDomain.DescribeVolumeAsync(image, p.Volume, ct);
        return new ResolvedParent(info, parentDomain.Locate(image, p.Volume));
    }

    /// <summary>The volume when it exists with the same spec (legality aside: it changes over a volume's life); CONFLICT when it differs.</summary>
    private async Task<VolumeInfo?> ExistingMatchingAsync(NewVolume spec, CancellationToken ct)
    {
        if (!IOFile.Exists(MetaPath(spec.Image, spec.Id))) return null;
        var existing = await DescribeVolumeAsync(spec.Image, spec.Id, ct);
        if (existing.Format != spec.Format || existing.Capacity != spec.Capacity || existing.Parent != spec.Parent || existing.Allocation != spec.Allocation)
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"volume {spec.Id} of image {spec.Image} exists on domain {Id} as {existing.Format} {existing.Allocation} {existing.Capacity} bytes over " +
                $"{existing.Parent?.ToString() ?? "nothing"}; asked for {spec.Format} {spec.Allocation} {spec.Capacity} bytes over {spec.Parent?.ToString() ?? "nothing"}");
        return existing;
    }

    /// <summary>
    /// File first, then the parent turned INTERNAL, then the metadata: until the .meta exists the
    /// volume does not exist, so a retry after a crash simply makes the file again.
    /// </summary>
    private async Task<VolumeInfo> CreateLockedAsync(NewVolume spec, ResolvedParent? parent, VolumeType type, long? clusterSize,
        CancellationToken ct)
    {
        StorageModes.CreateFolder(ImagePath(spec.Image));
        var path = Locate(spec.Image, spec.Id);
        await QemuImg.CreateAsync(path, spec.Format, spec.Capacity, parent?.Backing, parent?.Info.Format, clusterSize, spec.Allocation, ct);
        StorageModes.Restrict(path);
        Posix.FsyncFile(path);
        if (parent is not null && parent.Info.Domain == Id && parent.Info.Type != VolumeType.Internal)
            await WriteMetaAsync(spec.Image, parent.Info.Id, (await ReadMetaAsync(spec.Image, parent.Info.Id, ct)) with { Type = VolumeType.Internal }, ct);
        var meta = new VolumeMetadata(Id, spec.Image, spec.Parent, type, spec.Format, spec.Legality, spec.Capacity, 0,
            DateTimeOffset.UtcNow.ToUnixTimeSeconds(), spec.Owner, spec.Allocation);
        await WriteMetaAsync(spec.Image, spec.Id, meta, ct);
        return ToInfo(spec.Image, spec.Id, meta);
    }

    private async Task EnsureSpaceAsync(long neededBytes, string what, CancellationToken ct)
    {
        var info = await DescribeAsync(ct);
        if (neededBytes > info.AvailableBytes && await UnlinksFinishedAsync(ct))
            info = await DescribeAsync(ct); // a move back right after a move away: the room its delete gives back
        if (neededBytes > info.AvailableBytes)
            throw new OperationFailedException(ErrorCodes.NotEnoughSpace,
                $"storage domain {Id} ({Name}) has {info.AvailableBytes} bytes available " +
                $"(capacity limit {info.CapacityBytes}, used {info.UsedBytes}, file system free {info.FilesystemFreeBytes}); " +
                $"{what} needs {neededBytes} bytes");
    }

    /// <summary>Waits (at most 30 s) for the unlinks of images deleted here; false when there were none to wait for.</summary>
    private async Task<bool> UnlinksFinishedAsync(CancellationToken ct)
    {
        var unlinks = ImageFolderRemover.For(ImagesPath).IdleAsync();
        if (unlinks.IsCompleted) return false;
        try
        {
            await unlinks.WaitAsync(TimeSpan.FromSeconds(30), ct);
        }
        catch (TimeoutException)
        {
            // still unlinking: the space is counted as it stands
        }
        return true;
    }

    /// <summary>
    /// Invariant 3: a migration works only on an image whose volumes here are all its own. Another owner's (or
    /// an operator's) volume is never adopted; a volume of this migration made under a newer generation means the
    /// caller is stale.
    /// </summary>
    private void RequireOnlyOwned(ImageId image, IReadOnlyCollection<VolumeInfo> here, VolumeOwner owner)
    {
        var foreign = here.Where(v => v.Owner?.Migration != owner.Migration).ToList();
        if (foreign.Count > 0)
            throw new OperationFailedException(ErrorCodes.DestinationHoldsImage,
                $"storage domain {Id} ({Name}) already holds {foreign.Count} volume(s) of image {image} that {owner} did not make " +
                $"({string.Join(", ", foreign.Select(v => $"{v.Id} {v.Legality} owned by {v.Owner?.ToString() ?? "nobody (an operator's)"}"))}); " +
                "they are neither adopted nor deleted: remove them or move the disk elsewhere");
        RequireNotStale(image, here, owner);
    }

    private void RequireNotStale(ImageId image, IEnumerable<VolumeInfo> owned, VolumeOwner owner)
    {
        if (owned.FirstOrDefault(v => v.Owner is { } o && o.Migration == owner.Migration && o.Generation > owner.Generation) is { } newer)
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"volume {newer.Id} of image {image} on domain {Id} was made by {newer.Owner}, newer than this command's {owner}: a stale command changes nothing");
    }

    public async Task<ImageInfo> CloneImageStructureAsync(IStorageDomain source, ImageId image, VolumeOwner owner, CancellationToken ct = default)
    {
        RequireOtherFileDomain(source);
        RequireReachable();
        var sourceImage = await source.DescribeImageAsync(image, ct);
        var sourceIds = sourceImage.Volumes.Select(v => v.Id).ToHashSet();
        await WithImageLockAsync(image, async () =>
        {
            var hereList = await ReadVolumesAsync(image, ct);
            RequireOnlyOwned(image, hereList, owner);
            var here = hereList.ToDictionary(v => v.Id);
            var specs = new List<(NewVolume Spec, VolumeInfo Source)>();
            // Parents before children, whatever order the source listed them in.
            var sourceById = sourceImage.Volumes.ToDictionary(v => v.Id);
            int SourceDepth(VolumeInfo v)
            {
                var depth = 0;
                for (var c = v; c.Parent is { } p && sourceById.TryGetValue(p.Volume, out var up) && depth < 256; c = up) depth++;
                return depth;
            }
            foreach (var volume in sourceImage.Volumes.OrderBy(SourceDepth))
            {
                VolumeRef? parent = volume.Parent switch
                {
                    null => null,
                    { } p when p.Domain == source.Id || p.Domain == Id => new VolumeRef(Id, p.Volume),
                    { } p => throw new OperationFailedException(ErrorCodes.Conflict,
                        $"volume {volume.Id} of image {image} on domain {source.Id} lies over {p} on a third domain; clone that chain from there"),
                };
                var spec = new NewVolume(image, volume.Id, volume.Format, volume.Capacity, parent, Legality.Illegal, owner, volume.Allocation);
                if (await ExistingMatchingAsync(spec, ct) is null) specs.Add((spec, volume));
            }
            if (specs.Count == 0) return;
            var needed = specs.Sum(s => s.Source.AllocatedBytes);
            await EnsureSpaceAsync(needed,
                $"the copy of image {image} from domain {source.Id} ({specs.Count} volumes, {needed} allocated bytes)", ct);
            foreach (var (spec, sourceVolume) in specs)
            {
                // A twin is INTERNAL when anything (on the source, or already here) lies over it.
                var hasChild = sourceImage.Volumes.Any(v => v.Parent?.Volume == spec.Id)
                               || here.Values.Any(v => v.Parent?.Volume == spec.Id && !sourceIds.Contains(v.Id));
                var clusterSize = spec.Format == VolumeFormat.Cow
                    ? await QemuImg.ClusterSizeAsync(source.Locate(image, spec.Id), ct)
                    : (long?)null;
                var parent = spec.Parent is { } p
                    ? new ResolvedParent(await DescribeVolumeAsync(image, p.Volume, ct), p.Volume.ToString())
                    : null;
                await CreateLockedAsync(spec, parent, hasChild ? VolumeType.Internal : VolumeType.Leaf, clusterSize, ct);
            }
        }, ct);
        return await DescribeImageAsync(image, ct);
    }

    private void RequireOtherFileDomain(IStorageDomain source)
    {
        if (source.Kind != FileKind)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"source domain {source.Id} is of kind {source.Kind}; expected {FileKind}");
        if (source.Id == Id)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"source and destination are the same storage domain {Id}");
    }

    // ---------------------------------------------------------------- copying

    public async Task<VolumeInfo> CopyVolumeDataAsync(IStorageDomain source, ImageId image, VolumeId volume,
        IProgress<CopyProgress>? progress = null, CancellationToken ct = default, CopyRate? rate = null)
    {
        RequireOtherFileDomain(source);
        var twinPath = Locate(image, volume);
        // One copy per twin at a time; a second caller waits and then finds it LEGAL.
        return await WithLockAsync(twinPath, async () =>
        {
            var twin = await DescribeVolumeAsync(image, volume, ct);
            if (twin.Legality == Legality.Legal) return twin;
            var original = await source.DescribeVolumeAsync(image, volume, ct);
            if (original.Legality != Legality.Legal)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"source volume {volume} of image {image} on domain {source.Id} is ILLEGAL: its data is not complete, nothing to copy");
            if (original.Format != twin.Format || original.Capacity != twin.Capacity || original.Parent?.Volume != twin.Parent?.Volume)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"volume {volume} on domain {Id} ({twin.Format}, {twin.Capacity} bytes, parent {twin.Parent?.ToString() ?? "none"}) " +
                    $"is not a twin of the one on domain {source.Id} ({original.Format}, {original.Capacity} bytes, parent {original.Parent?.ToString() ?? "none"})");
            var startAllocated = twin.AllocatedBytes;
            await EnsureSpaceAsync(Math.Max(0, original.AllocatedBytes - startAllocated),
                $"the data of volume {volume} copied from domain {source.Id}", ct);

            var sourcePath = source.Locate(image, volume);
            var total = original.AllocatedBytes;
            progress?.Report(new CopyProgress(0, total));
            // The twin's header already names its parent (created by the clone, or re-pointed since).
            (string Path, VolumeFormat Format)? backing = twin.Parent is null ? null : await QemuImg.BackingFileAsync(twinPath, ct)
                ?? throw new OperationFailedException(ErrorCodes.Conflict,
                    $"volume {volume} on domain {Id} has parent {twin.Parent} in its metadata but no backing file in its header");

            using var stopPolling = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var convert = new RunningConvert();
            var dataBytes = progress is null ? null : DataBytesAsync(ProofNode(sourcePath, original.Format, layered: twin.Parent is not null), stopPolling.Token);
            var polling = ReportWhileCopyingAsync(twinPath, startAllocated, total, dataBytes, convert, progress, stopPolling.Token);
            var writingBehind = WriteBehindWhileCopyingAsync(twinPath, stopPolling.Token);
            try
            {
                await ConvertFollowingRateAsync(sourcePath, twin, twinPath, backing, rate, convert, ct);
            }
            finally
            {
                await stopPolling.CancelAsync();
                await polling;
                await writingBehind;
                if (dataBytes is not null) await dataBytes; // never throws: its map is reaped before the copy goes on
            }
            // qemu-img punches holes where the source reads zero (only -S 0 avoids it, by writing every zero): a preallocated raw
            // twin gets its space back, which changes no byte it reads.
            if (twin.Format == VolumeFormat.Raw && twin.Allocation == VolumeAllocation.Preallocated)
                Posix.AllocateWhole(twinPath);
            // The proof and the flush at once: the compare reads the copy from the page cache while fsync writes it out (measured
            // here: 1.9 s instead of 2.4 s for 1.25 GiB); the twin turns LEGAL only after both.
            await Task.WhenAll(VerifyLayerAsync(original, sourcePath, twin, twinPath, ct), Task.Run(() => Posix.FsyncFile(twinPath), CancellationToken.None));

            return await WithImageLockAsync(image, async () =>
            {
                var meta = await ReadMetaAsync(image, volume, ct);
                var legal = meta with { Legality = Legality.Legal, Generation = meta.Generation + 1 };
                await WriteMetaAsync(image, volume, legal, ct);
                progress?.Report(new CopyProgress(total, total));
                return ToInfo(image, volume, legal);
            }, ct);
        }, ct);
    }

    /// <summary>
    /// The layer's copy at the copy's speed limit, following every change of it at once: qemu-img's <c>-r</c> is fixed for
    /// its run, so a change stops the running convert (killed and reaped, so it holds no lock on the twin) and starts it
    /// again at the new limit. The new run writes every range the layer allocates again, so the twin is whole whatever
    /// the stopped one left; the proof after the copy (<see cref="VerifyLayerAsync"/>) still decides, as for any copy.
    /// </summary>
    private static async Task ConvertFollowingRateAsync(string sourcePath, VolumeInfo twin, string twinPath,
        (string Path, VolumeFormat Format)? backing, CopyRate? rate, RunningConvert convert, CancellationToken ct)
    {
        while (true)
        {
            var (limit, changed) = rate?.Current() ?? (0, CancellationToken.None);
            using var run = CancellationTokenSource.CreateLinkedTokenSource(ct, changed);
            try
            {
                try
                {
                    await QemuImg.ConvertLayerAsync(sourcePath, twinPath, twin.Format, backing?.Path, backing?.Format, run.Token, limit,
                        started: pid => convert.Pid = pid);
                }
                finally
                {
                    convert.Pid = 0; // reaped: its number may name another process soon
                }
                return;
            }
            catch (OperationCanceledException) when (changed.IsCancellationRequested && !ct.IsCancellationRequested)
            {
                // the limit changed: start again at the new one
            }
        }
    }

    /// <summary>
    /// Starts the twin's write-out every <see cref="WriteBehindInterval"/> while qemu-img fills the page cache (its default cache
    /// never flushes), so the disk writes beside the copy instead of after it, in the fsync before the twin may be LEGAL.
    /// </summary>
    private static async Task WriteBehindWhileCopyingAsync(string twinPath, CancellationToken stop)
    {
        try
        {
            while (true)
            {
                await Task.Delay(WriteBehindInterval, stop);
                await Task.Run(() => Posix.StartWriteback(twinPath), CancellationToken.None);
            }
        }
        catch (OperationCanceledException)
        {
            // the copy ended
        }
    }

    /// <summary>The qemu-img convert that copies a layer now (a speed change starts another).</summary>
    private sealed class RunningConvert
    {
        private volatile int _pid;
        public int Pid { get => _pid; set => _pid = value; }
    }

    /// <summary>
    /// Progress in the layer's allocated bytes (the unit of <paramref name="total"/>, which the SPM adds up over a step's
    /// layers), never going back: the larger of what the twin's allocation grew and the share of the layer's data the
    /// convert has written (not read: qemu-img reads ahead of its speed limit; where the map counts zeroes as data, e.g. a
    /// file system that cannot tell a preallocated range from data, the share stays short and the end reports the rest). The
    /// allocation alone said nothing for a preallocated twin (it is whole from the start: a post-copy of a preallocated raw
    /// disk showed 4 KiB copied and an ETA of days for the 46 s its copy took); the share alone goes back to zero when a
    /// speed change starts the convert again. Only a report: nothing here may fail the copy.
    /// </summary>
    private static async Task ReportWhileCopyingAsync(string twinPath, long startAllocated, long total, Task<long>? dataBytes,
        RunningConvert convert, IProgress<CopyProgress>? progress, CancellationToken stop)
    {
        if (progress is null) return;
        long shown = 0;
        try
        {
            while (true)
            {
                await Task.Delay(ProgressPollInterval, stop);
                var grown = Posix.AllocatedBytes(twinPath) - startAllocated;
                var written = 0L;
                if (dataBytes is { IsCompletedSuccessfully: true } mapped && mapped.Result is > 0 and var data && convert.Pid is > 0 and var pid
                    && Posix.BytesWrittenBy(pid) is { } bytes)
                    written = (long)((double)Math.Min(bytes, data) / data * total);
                shown = Math.Clamp(Math.Max(shown, Math.Max(grown, written)), 0, Math.Max(0, total - 1));
                progress.Report(new CopyProgress(shown, total));
            }
        }
        catch (OperationCanceledException)
        {
            // the copy ended
        }
        catch (Exception)
        {
            // a report that cannot be made is not the copy's failure: the copy's end reports it whole
        }
    }

    /// <summary>
    /// The bytes of data the convert of a layer writes: what the proof's node of its source holds as data; 0 when that cannot
    /// be read (progress then follows the twin's allocation alone).
    /// </summary>
    private static async Task<long> DataBytesAsync(JsonObject sourceNode, CancellationToken ct)
    {
        try
        {
            return (await QemuImg.MapAsync(sourceNode, ct)).Data.Sum(r => r.Length);
        }
        catch (Exception)
        {
            // best effort: qemu-img missing, its output unexpected, or the copy ended first
            return 0;
        }
    }

    /// <summary>How the proof opens a layer: alone (no backing) when it has a parent, else the whole image.</summary>
    private static JsonObject ProofNode(string path, VolumeFormat format, bool layered) =>
        layered ? QemuImg.LayerAloneNode(path) : QemuImg.ImageNode(path, format);

    /// <summary>
    /// Proves the twin holds exactly the source's layer, independently of the parents (which may
    /// still be being copied):
    /// - a layer with a parent: both opened alone (backing null) must allocate the same ranges
    ///   (a range allocated on one side only would show or hide the parent's data), and read the
    ///   same bytes there (qemu-img compare of the two layers alone; unallocated reads as zero on
    ///   both sides, so only the layer's own clusters can differ);
    /// - a base: nothing lies below it, so reading identically (qemu-img compare) is the whole
    ///   truth, whatever the allocation (a raw hole and written zeroes are the same data).
    /// The compare runs in slices side by side (<see cref="QemuImg.CompareInSlicesAsync"/>), every byte compared once.
    /// </summary>
    private static async Task VerifyLayerAsync(VolumeInfo original, string sourcePath, VolumeInfo twin, string twinPath, CancellationToken ct)
    {
        var layered = twin.Parent is not null;
        var sourceNode = ProofNode(sourcePath, original.Format, layered);
        var twinNode = ProofNode(twinPath, twin.Format, layered);
        var maps = await Task.WhenAll(QemuImg.MapAsync(sourceNode, ct), QemuImg.MapAsync(twinNode, ct));
        var (sourceMap, twinMap) = (maps[0], maps[1]);
        if (layered && !sourceMap.Present.SequenceEqual(twinMap.Present))
            throw new OperationFailedException(ErrorCodes.VerifyFailed,
                $"volume {twin.Id} of image {twin.Image}: the copy on domain {twin.Domain} allocates {twinMap.Present.Sum(r => r.Length)} bytes " +
                $"in {twinMap.Present.Count} ranges, the source on domain {original.Domain} {sourceMap.Present.Sum(r => r.Length)} bytes in {sourceMap.Present.Count} ranges");
        // Images of different sizes are compared whole: qemu-img then also checks that the longer one's end reads zero.
        var (equal, differences) = sourceMap.Size == twinMap.Size && sourceMap.Size > 0
            ? await QemuImg.CompareInSlicesAsync(sourceNode, twinNode, sourceMap.Size, ProofSlices(sourceMap), ct)
            : await QemuImg.CompareAsync("json:" + sourceNode.ToJsonString(), null, "json:" + twinNode.ToJsonString(), null, ct);
        if (!equal)
            throw new OperationFailedException(ErrorCodes.VerifyFailed, layered
                ? $"volume {twin.Id} of image {twin.Image}: the layer copied to domain {twin.Domain} differs from domain {original.Domain}: {differences}"
                : $"base volume {twin.Id} of image {twin.Image}: the copy on domain {twin.Domain} differs from domain {original.Domain}: {differences}");
    }

    /// <summary>A compare per core (at most four), each with about the same share of the data; one below 64 MiB of data.</summary>
    private static IReadOnlyList<(long Offset, long Length)> ProofSlices(ImageMap source) =>
        QemuImg.Slices(source.Data, source.Size,
            source.Data.Sum(r => r.Length) < 64 << 20 ? 1 : Math.Clamp(Environment.ProcessorCount, 1, 4));

    // ---------------------------------------------------------------- metadata changes

    public async Task<VolumeInfo> SetParentAsync(ImageId image, VolumeId volume, VolumeRef newParent, IStorageDomain? parentDomain,
        bool rewriteHeader, CancellationToken ct = default)
    {
        var current = await DescribeVolumeAsync(image, volume, ct);
        if (current.Parent?.Volume != newParent.Volume)
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"volume {volume} of image {image} lies over {current.Parent?.ToString() ?? "nothing"}; it can only be re-pointed to a copy " +
                $"of that same volume, not to {newParent}");
        var parent = (await ResolveParentAsync(image, newParent, parentDomain, ct))!;
        if (parent.Info.Capacity > current.Capacity)
            throw new OperationFailedException(ErrorCodes.Conflict,
                $"parent {newParent} has {parent.Info.Capacity} bytes, more than volume {volume}'s {current.Capacity}");
        return await WithImageLockAsync(image, async () =>
        {
            // Header first, metadata last: the metadata is the truth, and a retry redoes both.
            if (rewriteHeader)
                await QemuImg.RebaseUnsafeAsync(Locate(image, volume), parent.Backing, parent.Info.Format, ct);
            if (parent.Info.Domain == Id && parent.Info.Type != VolumeType.Internal)
                await WriteMetaAsync(image, parent.Info.Id, (await ReadMetaAsync(image, parent.Info.Id, ct)) with { Type = VolumeType.Internal }, ct);
            var meta = await ReadMetaAsync(image, volume, ct);
            if (meta.Parent == newParent) return ToInfo(image, volume, meta);
            var repointed = meta with { Parent = newParent, Generation = meta.Generation + 1 };
            await WriteMetaAsync(image, volume, repointed, ct);
            return ToInfo(image, volume, repointed);
        }, ct);
    }

    public Task<VolumeInfo> MarkLegalAsync(ImageId image, VolumeId volume, CancellationToken ct = default) =>
        WithImageLockAsync(image, async () =>
        {
            var info = await DescribeVolumeAsync(image, volume, ct);
            if (info.Legality == Legality.Legal) return info;
            // libvirt's block copy of a single volume leaves a preallocated raw twin full of holes (seen with libvirt 9 and
            // QEMU 7.2; QEMU's own mirror with sync=top does not): its space is given back before it counts as complete.
            if (info.Format == VolumeFormat.Raw && info.Allocation == VolumeAllocation.Preallocated)
                Posix.AllocateWhole(Locate(image, volume));
            var meta = await ReadMetaAsync(image, volume, ct);
            var legal = meta with { Legality = Legality.Legal, Generation = meta.Generation + 1 };
            await WriteMetaAsync(image, volume, legal, ct);
            return ToInfo(image, volume, legal);
        }, ct);

    public Task<IReadOnlyList<VolumeInfo>> AdoptVolumesAsync(ImageId image, MigrationId from, VolumeOwner to, CancellationToken ct = default) =>
        WithImageLockAsync<IReadOnlyList<VolumeInfo>>(image, async () =>
        {
            var adopted = new List<VolumeInfo>();
            foreach (var volume in (await ReadVolumesAsync(image, ct)).Where(v => v.Owner?.Migration == from))
            {
                // One record at a time, each written whole: a crash between two leaves some adopted, and a repeat takes the rest.
                var taken = (await ReadMetaAsync(image, volume.Id, ct)) with { Owner = to };
                await WriteMetaAsync(image, volume.Id, taken, ct);
                adopted.Add(ToInfo(image, volume.Id, taken));
            }
            return adopted;
        }, ct);

    // ---------------------------------------------------------------- removing

    public Task DeleteImageAsync(ImageId image, CancellationToken ct = default) =>
        WithImageLockAsync(image, async () =>
        {
            var folder = ImagePath(image);
            if (Absent(() => Directory.Exists(folder))) return true;
            RequireNoneOpen(image, UuidNamedFiles(folder).Select(name => Path.Combine(folder, name)));
            // A moved disk's source (the last step of every move), an operator's disk: the files are unlinked after the
            // delete answers (see ImageFolderRemover).
            RemoveImageFolder(image, unlinkLater: true);
            return true;
        }, ct);

    public Task<IReadOnlyList<VolumeInfo>> DeleteOwnedVolumesAsync(ImageId image, VolumeOwner owner, CancellationToken ct = default) =>
        WithImageLockAsync<IReadOnlyList<VolumeInfo>>(image, async () =>
        {
            var volumes = await ReadVolumesAsync(image, ct);
            var owned = volumes.Where(v => v.Owner?.Migration == owner.Migration).ToList();
            if (owned.Count == 0) return [];
            RequireNotStale(image, owned, owner);
            var ownedIds = owned.Select(v => v.Id).ToHashSet();
            if (volumes.FirstOrDefault(v => !ownedIds.Contains(v.Id) && v.Parent is { } p && p.Domain == Id && ownedIds.Contains(p.Volume)) is { } over)
                throw new OperationFailedException(ErrorCodes.Conflict,
                    $"volume {over.Id} of image {image} on domain {Id}, owned by {over.Owner?.ToString() ?? "nobody (an operator's)"}, lies over " +
                    $"volume {over.Parent!.Value.Volume} that {owner} made: deleting it would break that chain, so nothing is deleted");
            RequireNoneOpen(image, owned.Select(v => Locate(image, v.Id)));
            if (owned.Count == volumes.Count)
                RemoveImageFolder(image);
            else
                RemoveVolumes(image, owned);
            return Gone(owned);
        }, ct);

    /// <summary>
    /// <c>dom_md/ended/&lt;migrationId&gt;.&lt;imageId&gt;</c>: an empty file per disk of a migration whose copy here was
    /// undone; <c>dom_md/kept/…</c>: one per disk whose copy here the disk runs on; <c>dom_md/retired/…</c>: one per disk
    /// a migration deleted its source image of here.
    /// </summary>
    private string MarkPath(MigrationId migration, ImageId image, MigrationMark mark) =>
        Path.Combine(DomainPath, "dom_md", mark.ToString().ToLowerInvariant(), $"{migration}.{image}");

    /// <summary>
    /// Before marks were per disk (2026-12-06), an undone migration's mark named the migration alone and stood for all
    /// its disks: still honoured, so a late command of a migration undone by the older code stays refused.
    /// </summary>
    private string LegacyEndedPath(MigrationId migration) => Path.Combine(DomainPath, "dom_md", "ended", migration.ToString());

    public Task MarkMigrationAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default)
    {
        var path = MarkPath(migration, image, mark);
        var folder = Path.GetDirectoryName(path)!;
        RequireReachable();
        try
        {
            StorageModes.CreateFolder(folder);
            using (var file = new FileStream(path, StorageModes.Creating(FileMode.OpenOrCreate, FileAccess.Write)))
                file.Flush(flushToDisk: true);
            StorageModes.Restrict(path);
            Posix.FsyncDirectory(folder);
        }
        catch (IOException e)
        {
            throw new OperationFailedException(ErrorCodes.IoError,
                $"cannot record on domain {Id} that migration {migration}'s copy of image {image} is {mark.ToString().ToLowerInvariant()}: {e.Message}", e);
        }
        return Task.CompletedTask;
    }

    public Task UnmarkMigrationAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default)
    {
        var path = MarkPath(migration, image, mark);
        try
        {
            if (Absent(() => IOFile.Exists(path))) return Task.CompletedTask;
            IOFile.Delete(path);
            Posix.FsyncDirectory(Path.GetDirectoryName(path)!);
        }
        catch (IOException e)
        {
            throw new OperationFailedException(ErrorCodes.IoError,
                $"cannot take back on domain {Id} the {mark.ToString().ToLowerInvariant()} mark of migration {migration}'s copy of image {image}: {e.Message}", e);
        }
        return Task.CompletedTask;
    }

    public Task<bool> HasMigrationMarkAsync(MigrationId migration, ImageId image, MigrationMark mark, CancellationToken ct = default)
    {
        return Task.FromResult(!Absent(() =>
            IOFile.Exists(MarkPath(migration, image, mark)) || mark == MigrationMark.Ended && IOFile.Exists(LegacyEndedPath(migration))));
    }

    public async Task<IReadOnlyList<VolumeInfo>> RemoveIllegalLeftoversAsync(IReadOnlySet<ImageId> inUse, CancellationToken ct = default)
    {
        var removed = new List<VolumeInfo>();
        FinishInterruptedRemovals();
        foreach (var image in await ListImagesAsync(ct))
        {
            if (inUse.Contains(image)) continue;
            await WithImageLockAsync(image, async () =>
            {
                var folder = ImagePath(image);
                var volumes = await ReadVolumesAsync(image, ct);
                var doomed = Doomed(volumes);
                var volumeIds = volumes.Select(v => v.Id.ToString()).ToHashSet(StringComparer.Ordinal);
                // A UUID-named file without metadata is a create that did not finish or a delete that did not.
                var orphans = UuidNamedFiles(folder).Where(name => !volumeIds.Contains(name)).ToList();
                var candidates = doomed.Select(v => Locate(image, v.Id)).Concat(orphans.Select(name => Path.Combine(folder, name)));
                if (candidates.Any(path => Posix.LockHolder(path) is not null))
                    return true; // something runs on it after all: not a leftover, whatever its metadata says
                if (doomed.Count == volumes.Count)
                    RemoveImageFolder(image);
                else
                {
                    RemoveVolumes(image, doomed);
                    foreach (var orphan in orphans) IOFile.Delete(Path.Combine(folder, orphan));
                    foreach (var temp in Directory.EnumerateFiles(folder, "*" + KeyValueFile.TempSuffix))
                        IOFile.Delete(temp);
                    Posix.FsyncDirectory(folder);
                }
                removed.AddRange(Gone(doomed));
                return true;
            }, ct);
        }
        foreach (var temp in Directory.EnumerateFiles(Path.Combine(DomainPath, "dom_md"), "*" + KeyValueFile.TempSuffix))
            IOFile.Delete(temp);
        return removed;
    }

    /// <summary>
    /// Finishes the deletes a crash interrupted after their rename: the <see cref="RemovingPrefix"/> folders, which no
    /// reader lists (the image is gone for every caller) but whose files still take their space. Safe at any time, also
    /// beside a delete in progress (a file already gone is skipped). Returns how many folders it emptied and removed.
    /// </summary>
    /// <param name="failed">Told each folder it could not remove and why; the others are still tried.</param>
    public int FinishInterruptedRemovals(Action<string, Exception>? failed = null, CancellationToken ct = default)
    {
        if (!Directory.Exists(ImagesPath)) return 0; // nothing to finish where nothing is reachable
        // Never beside this process's remover on the same folder: the sweep waits for the folder the remover is on.
        return ImageFolderRemover.For(ImagesPath).Sweep(RemovingPrefix, failed, ct);
    }

    /// <summary>
    /// The leftovers among an image's volumes: each ILLEGAL one, each whose parent on this domain is gone (a delete
    /// that removed the parent first), and everything lying over those. A LEGAL volume with its chain here intact stays.
    /// </summary>
    private List<VolumeInfo> Doomed(IReadOnlyList<VolumeInfo> volumes)
    {
        var byId = volumes.ToDictionary(v => v.Id);
        var doomed = volumes
            .Where(v => v.Legality == Legality.Illegal || v.Parent is { } p && p.Domain == Id && !byId.ContainsKey(p.Volume))
            .Select(v => v.Id)
            .ToHashSet();
        for (var grew = true; grew;)
        {
            grew = false;
            foreach (var v in volumes)
                if (!doomed.Contains(v.Id) && v.Parent is { } p && p.Domain == Id && doomed.Contains(p.Volume))
                    grew = doomed.Add(v.Id);
        }
        return volumes.Where(v => doomed.Contains(v.Id)).ToList();
    }

    private static List<VolumeInfo> Gone(IEnumerable<VolumeInfo> volumes) =>
        volumes.Select(v => v with { Legality = Legality.Illegal, AllocatedBytes = 0 }).ToList();

    /// <summary>Names of the files in the folder that are named like a volume (its data file).</summary>
    private static IEnumerable<string> UuidNamedFiles(string folder) =>
        Directory.Exists(folder)
            ? Directory.EnumerateFiles(folder).Select(Path.GetFileName).Where(name => UuidText.TryParse(name, out _)).Select(name => name!)
            : [];

    /// <summary>Invariant 5: nothing a process has open is deleted. QEMU locks every image it opens (see <see cref="Posix.LockHolder"/>).</summary>
    private void RequireNoneOpen(ImageId image, IEnumerable<string> paths)
    {
        foreach (var path in paths)
            if (Posix.LockHolder(path) is { } holder)
                throw new OperationFailedException(ErrorCodes.VolumeInUse,
                    $"volume {Path.GetFileName(path)} of image {image} on storage domain {Id} ({Name}) is open in another process ({holder}); " +
                    "it is not deleted while in use");
    }

    /// <summary>
    /// The whole image folder goes in one atomic rename to a name no reader lists (needs no free space: no
    /// metadata is written), then its files, now or (<paramref name="unlinkLater"/>) by the domain's
    /// <see cref="ImageFolderRemover"/> after the caller goes on. A crash leaves either the image as it was or a
    /// <see cref="RemovingPrefix"/> folder that the cleanup removes.
    /// </summary>
    private void RemoveImageFolder(ImageId image, bool unlinkLater = false)
    {
        var folder = ImagePath(image);
        if (!Directory.Exists(folder)) return;
        var removing = Path.Combine(ImagesPath, $"{RemovingPrefix}{image}_{Guid.NewGuid():N}");
        Directory.Move(folder, removing);
        Posix.FsyncDirectory(ImagesPath);
        var remover = ImageFolderRemover.For(ImagesPath);
        if (unlinkLater) remover.RemoveLater(removing);
        else remover.RemoveNow(removing, throwOnError: true);
    }

    /// <summary>
    /// Completes when every image deleted so far in this process is unlinked or left to the next SPM's sweep (a test's
    /// wait before it looks into a folder or removes it; no step of a migration waits for it).
    /// </summary>
    public static Task RemovalsFinishedAsync() => ImageFolderRemover.AllIdleAsync();

    /// <summary>
    /// Some of an image's volumes: each one's metadata unlinked (which needs no space, unlike marking it ILLEGAL),
    /// parents before children, so at any crash what remains of the set has a missing parent (a leftover the
    /// cleanup recognises), never a shorter chain that would read as a complete older image. Then the data files.
    /// </summary>
    private void RemoveVolumes(ImageId image, IReadOnlyList<VolumeInfo> volumes)
    {
        var folder = ImagePath(image);
        var byId = volumes.ToDictionary(v => v.Id);
        int DepthInSet(VolumeInfo v)
        {
            var depth = 0;
            for (var c = v; c.Parent is { } p && p.Domain == Id && byId.TryGetValue(p.Volume, out var up) && depth < 256; c = up) depth++;
            return depth;
        }
        foreach (var volume in volumes.OrderBy(DepthInSet))
        {
            IOFile.Delete(MetaPath(image, volume.Id));
            Posix.FsyncDirectory(folder);
        }
        foreach (var volume in volumes)
            IOFile.Delete(Locate(image, volume.Id));
        Posix.FsyncDirectory(folder);
    }

    // ---------------------------------------------------------------- helpers

    /// <summary>Under the image's lock, as every change of an image is made; no usage count from before its end is taken after it.</summary>
    private async Task<T> WithImageLockAsync<T>(ImageId image, Func<Task<T>> action, CancellationToken ct)
    {
        // counted at the start too: a walk that begins during the change is not kept either
        Interlocked.Increment(ref _changes);
        try
        {
            return await WithLockAsync(ImagePath(image), action, ct);
        }
        finally
        {
            Interlocked.Increment(ref _changes);
        }
    }

    private Task WithImageLockAsync(ImageId image, Func<Task> action, CancellationToken ct) =>
        WithImageLockAsync(image, async () =>
        {
            await action();
            return true;
        }, ct);

    private static async Task<T> WithLockAsync<T>(string key, Func<Task<T>> action, CancellationToken ct)
    {
        using (await Locks.LockAsync(key, ct))
            return await action();
    }

    private static Task WithLockAsync(string key, Func<Task> action, CancellationToken ct) =>
        WithLockAsync(key, async () =>
        {
            await action();
            return true;
        }, ct);

    public override string ToString() => $"file domain {Id} ({Name}) at {DomainPath}";
}
