/* SPDX-License-Identifier: GPL-2.0 OR MIT */
/*
 * The /dev/axhv interface of the axhv kernel module, and the Linux-entry
 * header a hypervisor image must carry to be entered from Linux.
 *
 * This header mirrors hvctl/src/abi.rs field for field (the Rust side pins
 * the resulting ioctl numbers in its tests); change both together.
 * All structures are little endian and have no implicit padding.
 */
#ifndef AXHV_IOCTL_H
#define AXHV_IOCTL_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/ioctl.h>
#else
#include <linux/types.h>
#include <sys/ioctl.h>
#endif

#define AXHV_MODULE_ABI 0x00010001u /* 1.1: major << 16 | minor */

#define AXHV_IOC_MAGIC 0xE7

/* struct axhv_status flags */
#define AXHV_STATUS_REGION_OK (1u << 0)    /* region verified and claimed */
#define AXHV_STATUS_IMAGE_LOADED (1u << 1) /* an image is in the region */
#define AXHV_STATUS_IMAGE_LINUX_ENTRY (1u << 2) /* it has a Linux entry */
#define AXHV_STATUS_ENABLED (1u << 3)      /* Linux runs as the root VM */

struct axhv_status {		/* 40 bytes */
	__u32 abi;
	__u32 flags;
	__u64 region_base;
	__u64 region_size;
	__u64 image_size;
	__u32 online_cpus;
	__u32 reserved;
};

struct axhv_buf {		/* 16 bytes */
	__u64 ptr;
	__u64 len;
};

struct axhv_vm_create {		/* 40 bytes */
	struct axhv_buf config;	/* binary axvmconfig configuration */
	struct axhv_buf image;	/* guest kernel image */
	__u32 id;		/* out: the new VM's id */
	__u32 reserved;
};

struct axhv_vm_console {	/* 24 bytes */
	__u32 id;
	__u32 reserved;
	struct axhv_buf buf;
};

/* struct axhv_selftest vendor: which virtualization fields apply */
#define AXHV_VENDOR_AMD 0u	/* SVM: efer_svme, cpuid_svm */
#define AXHV_VENDOR_INTEL 1u	/* VMX: cpuid_vmx (EFER has no SVME) */

struct axhv_selftest {		/* 64 bytes */
	__s64 bad_buffer;	/* vm_create pointing into the hypervisor's region */
	__s64 unknown_nr;	/* hypercall 0x7777 */
	__s64 bad_vm_id;	/* vm_start of VM 0 */
	__s64 hv_read;		/* the root VM reading the hypervisor's region */
	__s64 efer_svme;	/* EFER.SVME as the root VM reads it (0: hidden) */
	__s64 cpuid_svm;	/* CPUID 8000_0001h ECX.SVM as it reads it (0: hidden) */
	__u32 vendor;		/* AXHV_VENDOR_* */
	__u32 reserved;
	__s64 cpuid_vmx;	/* CPUID 1 ECX.VMX (bit 5) as it reads it (0: hidden) */
};

#define AXHV_IOC_STATUS _IOR(AXHV_IOC_MAGIC, 0x00, struct axhv_status)
#define AXHV_IOC_LOAD_IMAGE _IOW(AXHV_IOC_MAGIC, 0x01, struct axhv_buf)
#define AXHV_IOC_ENABLE _IO(AXHV_IOC_MAGIC, 0x02)
#define AXHV_IOC_DISABLE _IO(AXHV_IOC_MAGIC, 0x03)
#define AXHV_IOC_VM_CREATE _IOWR(AXHV_IOC_MAGIC, 0x10, struct axhv_vm_create)
#define AXHV_IOC_VM_DESTROY _IOW(AXHV_IOC_MAGIC, 0x13, __u32)
#define AXHV_IOC_VM_LIST _IOWR(AXHV_IOC_MAGIC, 0x14, struct axhv_buf)
#define AXHV_IOC_VM_CONSOLE _IOWR(AXHV_IOC_MAGIC, 0x15, struct axhv_vm_console)
#define AXHV_IOC_VM_INPUT _IOW(AXHV_IOC_MAGIC, 0x16, struct axhv_vm_console)
#define AXHV_IOC_SELFTEST _IOR(AXHV_IOC_MAGIC, 0x20, struct axhv_selftest)

/* Hypercall numbers (hv-app/src/hypercall.rs): RAX = number, arguments in
 * RDI, RSI, RDX, R10; result in RAX, negative errno on failure. */
#define AXHV_HC_VM_CREATE 0x10
#define AXHV_HC_VM_START 0x11
#define AXHV_HC_VM_STOP 0x12
#define AXHV_HC_VM_DESTROY 0x13
#define AXHV_HC_VM_LIST 0x14
#define AXHV_HC_VM_CONSOLE_READ 0x15
#define AXHV_HC_VM_CONSOLE_WRITE 0x16
#define AXHV_HC_CPU_OFFER 0x20
#define AXHV_HC_CPU_RELEASE 0x21
#define AXHV_NO_CPU 0xffffffffUL

/*
 * The Linux-entry header. A hypervisor image that can be entered from Linux
 * carries it 16-byte aligned within its first AXHV_LINUX_HEADER_SCAN bytes.
 * Both functions are called on every online CPU with interrupts off, with
 * the System V calling convention:
 *
 *   int entry(unsigned int cpu, __u64 region_phys, __u64 region_size);
 *       0: this CPU now runs Linux as the root VM (returning from this call
 *       in guest mode); negative errno: this CPU is still native.
 *   void leave(unsigned int cpu);
 *       return this CPU to native execution (disable, or roll back an
 *       enable that failed on another CPU).
 *
 * The first instruction of each must be ENDBR64 (F3 0F 1E FA), so the
 * indirect call is valid under kernel indirect-branch tracking.
 *
 * The 8 bytes right after the header are a boot parameter the loader writes
 * before the first entry: Linux's TSC frequency in kHz (__u64, 0: unknown).
 */
#define AXHV_LINUX_MAGIC "AXHVLNX1"
#define AXHV_LINUX_HEADER_VERSION 1
#define AXHV_LINUX_HEADER_SCAN 0x10000

struct axhv_linux_header {	/* 40 bytes */
	char magic[8];		/* AXHV_LINUX_MAGIC, no NUL */
	__u32 version;		/* AXHV_LINUX_HEADER_VERSION */
	__u32 header_size;	/* sizeof(struct axhv_linux_header) */
	__u64 entry_offset;	/* entry(), from the image's first byte */
	__u64 leave_offset;	/* leave(), from the image's first byte */
	__u64 image_size;	/* bytes of the image the entries may use */
};

#endif /* AXHV_IOCTL_H */
