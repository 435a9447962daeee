using LiveMigration.Shared.Model;

namespace LiveMigration.HostNode.Hypervisor;

/// <summary>
/// The checks every hypervisor adapter makes on what it is asked, before it touches QEMU or libvirt: a VM spec that
/// names its drives once with plain absolute layer paths (only a base may be raw), and qcow2 where a new leaf goes.
/// </summary>
/// <param name="commaInPathsAllowed">False where paths end up in QEMU option strings that split on commas.</param>
public sealed class HypervisorInput(bool commaInPathsAllowed)
{
    public void ValidateSpec(VmSpec spec)
    {
        if (string.IsNullOrWhiteSpace(spec.Name))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"VM {spec.Id} needs a name");
        if (spec.MemoryMiB is < 8 or > 65536)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"VM {spec.Id} memory must be 8..65536 MiB, got {spec.MemoryMiB}");
        if (spec.Drives.Count == 0)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"VM {spec.Id} needs at least one drive");
        if (spec.Drives.Select(d => d.Image).Distinct().Count() != spec.Drives.Count)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"VM {spec.Id} names a drive twice");
        foreach (var drive in spec.Drives)
        {
            if (drive.Layers.Count == 0)
                throw new OperationFailedException(ErrorCodes.InvalidArgument, $"drive {drive.Image} of VM {spec.Id} has no layers");
            for (var i = 0; i < drive.Layers.Count; i++)
            {
                RequireAbsolute(drive.Layers[i], $"layer {i} of drive {drive.Image}");
                if (i > 0 && drive.Layers[i].Format != VolumeFormat.Cow)
                    throw new OperationFailedException(ErrorCodes.InvalidArgument,
                        $"layer {i} ({drive.Layers[i].Volume}) of drive {drive.Image} is raw: only a base may be raw");
            }
        }
    }

    public void RequireAbsolute(ChainLayer layer, string what)
    {
        if (!Path.IsPathFullyQualified(layer.Path) || (!commaInPathsAllowed && layer.Path.Contains(','))
            || layer.Path.StartsWith("json:", StringComparison.Ordinal))
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"{what} ({layer.Volume}) needs an absolute plain file path, got '{layer.Path}'");
    }

    /// <summary>
    /// A mirror's target is a twin of the drive's active layer: qcow2 over a chain, or raw when the drive is one raw
    /// volume (the mirror then copies the whole disk; a raw target under a backing chain would lose the backing's data).
    /// </summary>
    public void RequireMirrorTarget(ChainLayer target, int driveLayers)
    {
        RequireAbsolute(target, "destination leaf");
        if (target.Format != VolumeFormat.Cow && driveLayers > 1)
            throw new OperationFailedException(ErrorCodes.InvalidArgument,
                $"destination leaf ({target.Volume}) is raw but the drive has {driveLayers} layers: only a single-volume drive mirrors into a raw volume");
    }

    public void RequireAbsoluteCow(ChainLayer layer, string what)
    {
        RequireAbsolute(layer, what);
        if (layer.Format != VolumeFormat.Cow)
            throw new OperationFailedException(ErrorCodes.InvalidArgument, $"{what} ({layer.Volume}) must be qcow2, got {layer.Format}");
    }
}
